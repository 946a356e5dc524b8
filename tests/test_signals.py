"""SIGTERM stops either process well inside docker compose's stop_grace_period (train.py saves first);
a second Ctrl-C stops train.py at once."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import TrainDir
from shared.runtime import cli
from shared.runtime.signals import StopRequest
from tests.conftest import SHORT_RUN, wait_until, wait_while_progressing

pytestmark = pytest.mark.slow

GRACE_SECS = 30  # the stop_grace_period docker-compose.yml gives the services, at most


def test_sigterm_saves_the_current_step_and_exits_0(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, "--set", "train.steps=1000000")
    wait_while_progressing(lambda: bool(list_checkpoints(train_dir.checkpoints)), trainer, "a first checkpoint")
    trainer.signal(signal.SIGTERM)
    assert trainer.wait(timeout=GRACE_SECS) == 0, trainer.output()
    stopped_at = int(re.search(r"stopped at step (\d+)", trainer.output()).group(1))
    assert list_checkpoints(train_dir.checkpoints)[-1].step == stopped_at, "the step it stopped at was not saved"


def test_sigterm_stops_an_idle_evaluator(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    wait_until(lambda: "waiting for train.py" in evaluator.output(), 60, "eval.py to wait for train.py")
    evaluator.signal(signal.SIGTERM)
    assert evaluator.wait(timeout=GRACE_SECS) == 0, evaluator.output()


def test_a_second_sigint_interrupts_at_once(own_signal_handlers) -> None:
    """The first SIGINT asks for a stop at the next safe point; the second raises at once (exit code 130)."""
    stop = StopRequest()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(SystemExit) as exited:
        cli.run("train.py", lambda argv: os.kill(os.getpid(), signal.SIGINT) or 0, [])
    assert exited.value.code == 130
