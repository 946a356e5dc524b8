"""SIGKILL of train.py at any moment, during steps or checkpoint writes: nothing lost, nothing half-written
seen, and the resumed run's losses equal an uninterrupted run's (eval.py's side: test_eval_crashes.py)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import CHECKPOINT_TEMP_RE, TrainDir
from tests.conftest import SHORT_RUN, Proc, assert_every_checkpoint_loads, scalar_points, wait_while_progressing

pytestmark = [pytest.mark.slow, pytest.mark.long]

KILLS = 12


def temp_files(train_dir: TrainDir) -> list[str]:
    return [n for n in os.listdir(train_dir.checkpoints) if CHECKPOINT_TEMP_RE.match(n)]


def newest_step(train_dir: TrainDir) -> int:
    found = list_checkpoints(train_dir.checkpoints)
    return found[-1].step if found else 0


def kill_trainer_at_some_moment(trainer: Proc, train_dir: TrainDir, rng: random.Random) -> int:
    """SIGKILL during a checkpoint write (a temp file exists) or at a random moment between writes."""
    before = newest_step(train_dir)
    exited = lambda: trainer.popen.poll() is not None  # noqa: E731
    # Kill only after this run committed a checkpoint of its own, so every run makes progress.
    wait_while_progressing(lambda: newest_step(train_dir) > before or exited(), trainer, "a new checkpoint")
    if rng.random() < 0.5:
        wait_while_progressing(lambda: exited() or bool(temp_files(train_dir)), trainer, "a save", interval=0.0005)
    else:
        time.sleep(rng.uniform(0, 0.1))  # a random moment among the steps: the delay is the point here
    trainer.signal(signal.SIGKILL)
    return trainer.wait()


def test_train_killed_anywhere_resumes_to_the_same_losses(tmp_path: Path, start) -> None:
    """12+ SIGKILLs, during steps and (about half) during checkpoint writes; the final loss curve equals an
    uninterrupted one.

    The uninterrupted reference trains beside the killed runs. They start from the warm server
    (tests/warm_cli.py), so each costs its start-up, not its imports; the last one starts cold."""
    run = [
        *SHORT_RUN,
        "--set", "train.steps=400",
        "--set", "checkpoint.every_steps=5",
        "--set", "checkpoint.max_to_keep=3",
        "--set", "log.every_steps=1",
    ]  # fmt: skip
    reference = TrainDir(tmp_path / "reference")
    uninterrupted = start("train.py", "--train-dir", str(reference.root), *run)

    train_dir = TrainDir(tmp_path / "killed")
    rng = random.Random(7)
    moments: Counter[str] = Counter()
    while sum(moments.values()) < KILLS:
        proc = start("train.py", "--train-dir", str(train_dir.root), *run)
        if kill_trainer_at_some_moment(proc, train_dir, rng) == 0:
            break  # it finished before the kill landed
        moments["during a checkpoint write" if temp_files(train_dir) else "between checkpoint writes"] += 1
        assert_every_checkpoint_loads(train_dir)

    assert uninterrupted.wait_while_logging() == 0, uninterrupted.output()
    expected = scalar_points(reference.train_run, "loss")
    assert len(expected) == 400
    final = start("train.py", "--train-dir", str(train_dir.root), *run, cold=True)
    assert final.wait_while_logging() == 0, final.output()
    print(f"kills survived by train.py: {dict(moments)}")
    assert sum(moments.values()) >= KILLS, moments
    assert moments["during a checkpoint write"] > 0, moments
    assert newest_step(train_dir) == 400
    assert not temp_files(train_dir), "a temp file outlived the run that left it"
    assert_every_checkpoint_loads(train_dir)
    assert scalar_points(train_dir.train_run, "loss") == expected
