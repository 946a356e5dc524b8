"""SIGKILL of eval.py at any moment, and a ledger record cut short: each checkpoint recorded once, and one
point per tag and step in TensorBoard."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from tests.conftest import SHORT_RUN, Proc, scalar_points, wait_while_progressing
from tests.test_end_to_end import assert_one_point_per_evaluated_step

pytestmark = [pytest.mark.slow, pytest.mark.long]

KILLS = 12


def kill_evaluator_at_some_moment(evaluator: Proc, trainer: Proc, train_dir: TrainDir, rng: random.Random) -> None:
    """Kill during start-up and load, mid-evaluation, or right as a result is being recorded."""
    recorded = len(read_records(train_dir.results))
    grew = lambda: len(read_records(train_dir.results)) > recorded or evaluator.popen.poll() is not None  # noqa: E731
    moment = rng.choice(["startup", "after a record", "mid-evaluation"])
    if moment == "startup":
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment in joining, reading the config, the first scan or load
    else:
        # The next evaluation waits for the trainer's next checkpoint: bounded by the trainer's progress.
        wait_while_progressing(grew, trainer, "an evaluation", interval=0.002)
        if moment == "mid-evaluation":
            time.sleep(rng.uniform(0, 0.15))  # a random moment in the next load, evaluation or record
    evaluator.signal(signal.SIGKILL)
    evaluator.wait()


def test_eval_killed_anywhere_records_each_step_once(tmp_path: Path, start) -> None:
    """12 SIGKILLs of eval.py (at start-up, mid-evaluation, right after a record) while train.py runs: one
    ledger record and one point per tag per checkpoint.
    The killed evaluators start from the warm server (tests/warm_cli.py); the last one starts cold."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    run = [
        *SHORT_RUN,
        "--set", "train.steps=1000000",
        "--set", "checkpoint.every_steps=100",
        "--set", "checkpoint.max_to_keep=100000",
    ]  # fmt: skip
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    rng = random.Random(11)
    for _ in range(KILLS):
        evaluator = start("eval.py", "--train-dir", str(train_dir.root))
        kill_evaluator_at_some_moment(evaluator, trainer, train_dir, rng)
        assert trainer.popen.poll() is None, "training must still be running while the evaluator is killed"
    trainer.signal(signal.SIGTERM)
    assert trainer.wait() == 0, trainer.output()

    final = start("eval.py", "--train-dir", str(train_dir.root), "--idle-timeout", "2", cold=True)
    assert final.wait() == 0, final.output()
    records = assert_one_point_per_evaluated_step(train_dir)
    saved = [c.step for c in list_checkpoints(train_dir.checkpoints)]
    assert [r["step"] for r in records] == saved, "a checkpoint is missing from, or repeated in, the ledger"
    assert all(r["status"] == "ok" for r in records)
    print(f"kills survived by eval.py: {KILLS}; checkpoints: {len(saved)}; records lost: 0; duplicated: 0")


@pytest.mark.parametrize("cut", ["half a line", "a whole line"])
def test_a_record_cut_short_is_redone_without_a_second_point(tmp_path: Path, start, cut: str) -> None:
    """Points flushed but the record lost (or half-written) at a crash: the restart re-evaluates that step
    and TensorBoard keeps one point for it, not two."""
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, "--set", "train.steps=80")
    assert trainer.wait() == 0
    assert start("eval.py", "--train-dir", str(train_dir.root)).wait() == 0
    lines = train_dir.results.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2 and len(scalar_points(train_dir.eval_run, "accuracy")) == 2
    last = lines[-1][: len(lines[-1]) // 2] if cut == "half a line" else b""
    train_dir.results.write_bytes(lines[0] + last)

    restarted = start("eval.py", "--train-dir", str(train_dir.root))
    assert restarted.wait() == 0, restarted.output()
    records = assert_one_point_per_evaluated_step(train_dir)
    assert [r["step"] for r in records] == [40, 80]
