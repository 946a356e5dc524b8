"""A full disk, a read-only folder and NaN losses: train.py keeps what it had, says what happened, and
either carries on or stops with exit code 1."""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import train
from shared.checkpoints.format import load
from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import CHECKPOINT_TEMP_RE, TrainDir
from shared.runtime import cli
from shared.training.data import DataPosition, ResumableBatches
from tests.conftest import SHORT_RUN, Proc, fill_disk, mounted_tmpfs


class OnLog(logging.Handler):
    """Acts on the disk when train.py logs a message containing one of the keys: the fault arrives (or
    goes) at a chosen point of a real run, in train.py's own thread, with no change to its code."""

    def __init__(self, actions: dict[str, Callable[[], None]]) -> None:
        super().__init__()
        self.actions, self.seen = actions, collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for key, action in self.actions.items():
            if key in message:
                self.seen[key] += 1
                action()


@contextlib.contextmanager
def acting_on_log(actions: dict[str, Callable[[], None]]) -> Iterator[OnLog]:
    handler, root = OnLog(actions), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run_train(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        cli.run("train.py", train.main, list(argv))
    return exited.value.code


def assert_intact(train_dir: TrainDir) -> list[int]:
    """Every committed checkpoint loads and no temp file is left; returns the steps on disk."""
    assert not [n for n in os.listdir(train_dir.checkpoints) if CHECKPOINT_TEMP_RE.match(n)]
    found = list_checkpoints(train_dir.checkpoints)
    for checkpoint in found:
        load(checkpoint.path)
    return [c.step for c in found]


RUN = [*SHORT_RUN, "--set", "train.steps=100", "--set", "checkpoint.every_steps=10", "--device", "cpu"]


def test_a_full_disk_twice_in_a_row_is_survived(tmp_path: Path, caplog, own_signal_handlers) -> None:
    """checkpoints/ is a real 32 MiB tmpfs, filled up after step 20's save and emptied after the second
    failed save: torch.save meets a real ENOSPC (which it reports as a RuntimeError)."""
    train_dir = TrainDir(tmp_path / "run")
    with mounted_tmpfs(train_dir.checkpoints, "32m"):
        filler: list[Path] = []
        failures: list[None] = []

        def free_after_the_second_failure() -> None:
            failures.append(None)
            if len(failures) == 2:
                filler[0].unlink()

        actions = {
            "saved ckpt-000000020.pt": lambda: filler.append(fill_disk(train_dir.checkpoints)),
            "could not save": free_after_the_second_failure,
        }
        with acting_on_log(actions) as seen:
            code = run_train("--train-dir", str(train_dir.root), *RUN, "--set", "checkpoint.max_to_keep=20")
        assert code == 0
        assert seen.seen["could not save"] == 2
        assert assert_intact(train_dir) == [10, 20, 50, 60, 70, 80, 90, 100]
    warnings = [r.getMessage() for r in caplog.records if "could not save" in r.getMessage()]
    assert len(warnings) == 2
    assert "step 30: No space left on device" in warnings[0] and "ckpt-000000020.pt" in warnings[0]
    assert "(2/3 failures)" in warnings[1]
    assert train_dir.finished.exists()


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.mark.parametrize(("error", "allowed", "saved"), [(errno.EROFS, 3, [10, 20]), (errno.ENOSPC, 1, [10, 20])])
def test_failures_in_a_row_stop_the_run_with_exit_1(
    tmp_path: Path, capsys, own_signal_handlers, error: int, allowed: int, saved: list[int]
) -> None:
    """checkpoints/ is a real tmpfs, filled up (or remounted read-only) after step 20's save and left so."""
    train_dir = TrainDir(tmp_path / "run")
    with mounted_tmpfs(train_dir.checkpoints, "32m"):
        filler: list[Path] = []
        if error == errno.EROFS:
            fault = functools.partial(remount_read_only, train_dir.checkpoints)
        else:
            fault = lambda: filler.append(fill_disk(train_dir.checkpoints))  # noqa: E731
        with acting_on_log({"saved ckpt-000000020.pt": fault}):
            code = run_train(
                "--train-dir", str(train_dir.root), *RUN, "--set", f"checkpoint.max_save_failures={allowed}"
            )
        assert code == 1
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith("train.py: error: could not save the checkpoint for step")
        assert os.strerror(error) in message and f"{allowed} failed save(s) in a row" in message
        assert "newest complete checkpoint is ckpt-000000020.pt" in message
        assert assert_intact(train_dir) == saved
        assert not train_dir.finished.exists()

        # The cause fixed, the same command resumes from the newest complete checkpoint and finishes.
        if error == errno.EROFS:
            subprocess.run(["mount", "-o", "remount,rw", str(train_dir.checkpoints)], check=True)
        else:
            filler[0].unlink()
        with acting_on_log({"resumed from ckpt-000000020.pt": lambda: None}) as seen:
            assert run_train("--train-dir", str(train_dir.root), *RUN) == 0
        assert seen.seen["resumed from ckpt-000000020.pt"] == 1
        assert train_dir.finished.exists() and assert_intact(train_dir)[-1] == 100


def train_on_poisoned_data(tmp_path: Path, start, train: str, checkpoint: str) -> tuple[TrainDir, Proc]:
    """train.py, to its end, on blobs whose first training input is NaN; `train`/`checkpoint` are YAML flows."""
    train_dir = TrainDir(tmp_path / "run")
    config = tmp_path / "poisoned.yaml"
    config.write_text(
        "task: tests.poisoned_task:PoisonedBlobsTask\n"
        "data: {batch_size: 32, examples: 300}\n"
        f"train: {train}\n"
        f"checkpoint: {checkpoint}\n"
    )
    trainer = start("train.py", "--train-dir", str(train_dir.root), "--config", str(config))
    trainer.wait()
    return train_dir, trainer


def assert_finite_weights(path: Path) -> None:
    weights = load(path)["model"]
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), path


@pytest.mark.slow
def test_a_nan_loss_stops_before_any_broken_checkpoint(tmp_path: Path, start) -> None:
    train_dir, trainer = train_on_poisoned_data(
        tmp_path, start, "{steps: 50, lr: 0.01}", "{every_steps: 1, max_to_keep: 100}"
    )
    assert trainer.popen.returncode == 1
    (message,) = [line for line in trainer.output().splitlines() if "error:" in line]
    bad_step = int(message.split("NaN/Inf at step ")[1].split(";")[0])
    saved = assert_intact(train_dir)
    assert saved == list(range(1, bad_step)), "a checkpoint at or after the bad step was written"
    for step in saved:
        assert_finite_weights(train_dir.checkpoint(step))


@pytest.mark.slow
def test_nan_policy_skip_step_skips_the_bad_updates_and_finishes(tmp_path: Path, start) -> None:
    train_dir, trainer = train_on_poisoned_data(
        tmp_path, start, "{steps: 50, lr: 0.01, nan_policy: skip_step}", "{every_steps: 25}"
    )
    assert trainer.popen.returncode == 0, trainer.output()
    skipped = [
        int(line.split("step ")[1].split(":")[0]) for line in trainer.output().splitlines() if "skipped its" in line
    ]
    batches = ResumableBatches(TensorDataset(torch.zeros(300)), 32, seed=0, position=DataPosition())
    per_epoch = len(batches.epoch_batches(0))
    poisoned = [s for s in range(1, 51) if 0 in batches.epoch_batches((s - 1) // per_epoch)[(s - 1) % per_epoch]]
    assert skipped == poisoned and poisoned, "skipped steps must be exactly those whose batch holds the NaN input"
    assert_finite_weights(train_dir.checkpoint(50))
