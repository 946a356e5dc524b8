"""SIGKILL of train.py at any moment, during steps or checkpoint writes: nothing lost, nothing half-written
seen, and the resumed run's losses equal an uninterrupted run's (eval.py's side: test_eval_crashes.py)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from shared.protocol.layout import TrainDir
from tests.conftest import (
    SHORT_RUN,
    assert_every_checkpoint_loads,
    kill_trainer_at_some_moment,
    newest_step,
    scalar_points,
    temp_files,
)

pytestmark = [pytest.mark.slow, pytest.mark.long]

KILLS = 12


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
