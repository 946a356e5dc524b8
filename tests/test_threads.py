"""CPU threads: beside a live trainer a bare eval.py takes the evaluator's share and says so once; an
option overrides it; without a live trainer torch's default stands. Real processes, read from their logs."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import TrainDir
from shared.runtime import threads
from tests.conftest import SHORT_RUN, wait_while_progressing

pytestmark = pytest.mark.slow


def thread_lines(output: str) -> list[str]:
    return re.findall(r"CPU threads: .*", output)


def test_eval_beside_a_live_trainer_takes_the_evaluators_share_unless_told(tmp_path: Path, start, monkeypatch) -> None:
    # torch's own setting would come first: these processes start cold, without the one tests/conftest.py sets.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    train_dir = TrainDir(tmp_path / "run")
    trainer = start(
        "train.py", *SHORT_RUN, "--set", "train.steps=100000", "--train-dir", str(train_dir.root), cold=True
    )
    wait_while_progressing(
        lambda: bool(list_checkpoints(train_dir.checkpoints)), trainer, "train.py's first checkpoint"
    )
    adhoc = ("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", "latest", "--json")

    beside = start(*adhoc, cold=True)
    assert beside.wait() == 0, beside.output()
    share = threads.evaluator_share(threads.host_cores())
    assert thread_lines(beside.output()) == [
        f"CPU threads: {share} intra-op, {share} inter-op of {threads.host_cores()} cores (train.py (pid "
        f"{trainer.popen.pid}) is training this train_dir on this host; --threads N to take more); niceness "
        f"{threads.EVALUATOR_NICENESS + os.getpriority(os.PRIO_PROCESS, 0)}, so the trainer's threads run first"
    ]
    told = start(*adhoc, "--threads", "2")  # warm: --threads comes before OMP_NUM_THREADS
    assert told.wait() == 0, told.output()
    assert [line.split(" of ")[0] for line in thread_lines(told.output())] == ["CPU threads: 2 intra-op, 2 inter-op"]
    assert thread_lines(told.output())[0].endswith("(--threads)"), "--threads N: as it is, at the same priority"

    trainer.signal(signal.SIGTERM)
    assert trainer.wait() == 0, trainer.output()
    assert [
        line.endswith("(torch's default; --threads N or share to change it)") for line in thread_lines(trainer.output())
    ] == [True]
    after = start(*adhoc, cold=True)  # the lock file still names the trainer's pid, but no such process is alive
    assert after.wait() == 0, after.output()
    assert thread_lines(after.output())[0].endswith("(torch's default; --threads N or share to change it)")
