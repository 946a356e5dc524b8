"""Bad and hostile checkpoints: each is reported in one line, recorded as failed, and never runs code."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shared.checkpoints.format import load
from shared.errors import CheckpointError
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.tasks.digits import DigitsModel, DigitsTask
from tests.conftest import SHORT_RUN, RunsCodeWhenUnpickled

pytestmark = pytest.mark.slow


def good_state(train_dir: TrainDir) -> dict:
    return torch.load(train_dir.checkpoint(40), weights_only=True)


def truncated(train_dir: TrainDir, path: Path) -> None:
    data = train_dir.checkpoint(40).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(train_dir: TrainDir, path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(50_000))


def zero_bytes(train_dir: TrainDir, path: Path) -> None:
    path.write_bytes(b"")


def other_model(train_dir: TrainDir, path: Path) -> None:
    model = DigitsTask(DigitsModel(channels=8), None, 0).build_model()
    torch.save({"format_version": 1, "step": checkpoint_step(path), "model": model.state_dict()}, path)


def nan_weight(train_dir: TrainDir, path: Path) -> None:
    state = good_state(train_dir) | {"step": checkpoint_step(path)}
    next(t for t in state["model"].values() if t.is_floating_point())[0] = float("nan")
    torch.save(state, path)


def newer_format(train_dir: TrainDir, path: Path) -> None:
    torch.save(good_state(train_dir) | {"step": checkpoint_step(path), "format_version": 99}, path)


def hostile_pickle(train_dir: TrainDir, path: Path) -> None:
    marker = train_dir.root.parent / "pwned"
    torch.save({"format_version": 1, "step": checkpoint_step(path), "model": RunsCodeWhenUnpickled(marker)}, path)


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's final or temp name."""
    return int(re.search(r"\d{9}", path.name).group())


# name -> (writer, words the reason must contain)
BAD_FILES: dict[str, tuple[Callable[[TrainDir, Path], None], str]] = {
    "truncated": (truncated, "truncated or corrupt"),
    "random bytes": (random_bytes, "truncated or corrupt"),
    "zero bytes": (zero_bytes, "empty file"),
    "another model's weights": (other_model, "does not fit this model"),
    "a NaN weight": (nan_weight, "NaN or Inf"),
    "a newer format": (newer_format, "upgrade trainval"),
    "a pickle that runs code": (hostile_pickle, "refused to load"),
}


def test_bad_checkpoints_are_recorded_as_failed_and_the_daemon_goes_on(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, "--set", "train.steps=80")
    assert trainer.wait() == 0, trainer.output()
    # Bad files at steps 41..47, between the good checkpoints 40 and 80, each committed by rename.
    bad_paths = {}
    for step, (name, (write, _)) in enumerate(BAD_FILES.items(), start=41):
        path = train_dir.checkpoint(step)
        temp = path.with_name(f".{path.name}.tmp")
        write(train_dir, temp)
        os.replace(temp, path)
        bad_paths[name] = path

    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()
    log = evaluator.output()
    records = {r["step"]: r for r in read_records(train_dir.results)}
    assert records[40]["status"] == "ok" and records[80]["status"] == "ok", "the daemon stopped at a bad file"
    for name, path in bad_paths.items():
        expected = BAD_FILES[name][1]
        record = records[checkpoint_step(path)]
        assert record["status"] == "failed" and expected in record["reason"], (name, record)
        lines = [line for line in log.splitlines() if path.name in line]
        assert len(lines) == 1 and expected in lines[0], (name, lines)
    assert "Traceback" not in log
    assert not (tmp_path / "pwned").exists(), "unpickling ran code"

    # Ad hoc, each bad file is a non-zero exit with the same reason.
    for name, path in bad_paths.items():
        adhoc = start("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", str(path))
        assert adhoc.wait() == 1, (name, adhoc.output())
        assert BAD_FILES[name][1] in adhoc.output() and str(path) in adhoc.output(), name
        assert "Traceback" not in adhoc.output()
    assert not (tmp_path / "pwned").exists(), "unpickling ran code"


def test_a_hostile_pickle_is_refused_before_any_code_runs(tmp_path: Path) -> None:
    """torch.load(weights_only=True) underneath: the payload's os.system never runs, even as the newest file."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.checkpoints.mkdir(parents=True)
    hostile_pickle(train_dir, train_dir.checkpoint(5))
    with pytest.raises(CheckpointError, match="refused to load"):
        load(train_dir.checkpoint(5))
    assert not (tmp_path / "pwned").exists()
    # The payload is real: plain unpickling would have run it.
    torch.load(train_dir.checkpoint(5), weights_only=False)
    assert (tmp_path / "pwned").exists()
