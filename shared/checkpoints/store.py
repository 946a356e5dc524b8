"""The checkpoints folder: listing, committing and retiring checkpoints, and clearing what a crash left.

A checkpoint exists under its committed name only once it is complete: a file `ckpt-<step:09d>.pt`
(one process, or DDP) is written to `.ckpt-<step:09d>.pt.tmp` in the same folder, fsynced, renamed into
place and the folder fsynced. train.py commits `ckpt-<step:09d>.weights.pt` the same way just before it,
the weights alone: an evaluator then reads a third of an AdamW checkpoint (format.load_weights). A crash
between the two leaves a weights file without its checkpoint, removed at the next start. A folder
`ckpt-<step:09d>/` (FSDP) is committed the same way by shared.checkpoints.sharded. Both forms go through
the same code here: a checkpoint is retired by renaming it back to its temp name and then removing it,
so no reader ever sees half of one under its committed name, and a leftover is removed with the other
stale temps at the next start.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.checkpoints.format import first_line, stamped
from shared.protocol.files import atomic_file, make_folder
from shared.protocol.layout import (
    CHECKPOINT_TEMP_RE,
    WEIGHTS_RE,
    TrainDir,
    checkpoint_name,
    checkpoint_step,
    weights_name,
)


@dataclass(frozen=True, order=True)
class Checkpoint:
    step: int
    path: Path  # a file, or a folder (sharded)

    @property
    def temp(self) -> Path:
        """Its temp name (pattern CHECKPOINT_TEMP_RE): where it is written before, and retired through after."""
        return self.path.with_name(f".{self.path.name}.tmp")

    @property
    def weights(self) -> Path | None:
        """The weights-only file beside a checkpoint file (it may be absent); none beside a folder."""
        return self.path.with_name(weights_name(self.step)) if self.path.name.endswith(".pt") else None


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Committed checkpoints in step order; temp files and other names are not checkpoints."""
    return list_by_step(folder, checkpoint_step)


def list_by_step(folder: Path, step_of: Callable[[Path], int | None]) -> list[Checkpoint]:
    """The folder's entries that `step_of` gives a step (a checkpoint source's rule), in step order."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(Checkpoint(step, folder / name) for name in names if (step := step_of(folder / name)) is not None)


def save(train_dir: TrainDir, step: int, state: dict[str, Any], *, weights_beside: bool = False) -> Path:
    """Commit `state` as the checkpoint file for `step`; readers see all of it or nothing. With
    `weights_beside`, its weights alone are committed first, as `ckpt-<step>.weights.pt`. A failed write
    (full disk, read-only folder) is an OSError, whatever torch.save made of it."""
    checkpoint = Checkpoint(step, train_dir.checkpoint(step))
    make_folder(checkpoint.path.parent)
    if weights_beside and checkpoint.weights is not None:
        _commit(checkpoint.weights, stamped(step, {"model": state["model"]}))
    _commit(checkpoint.path, stamped(step, state))
    return checkpoint.path


def _commit(path: Path, state: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with atomic_file(path, temp) as f:
        try:
            # An open file, not a path: torch.save names the archive's inner folder after a path's stem.
            torch.save(state, f)
        except RuntimeError as err:  # torch's zip writer reports a failed write as "unexpected pos"
            cause = err.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror, str(temp)) from None
            raise OSError(None, f"torch.save failed: {first_line(err)}", str(temp)) from None


def retire(checkpoint: Checkpoint) -> None:
    """Remove a committed checkpoint, file or folder: renamed to its temp name first, then removed; its
    weights file goes first (a reader that finds it gone reads the checkpoint, or finds that gone too)."""
    if checkpoint.weights is not None:
        checkpoint.weights.unlink(missing_ok=True)
    try:
        os.replace(checkpoint.path, checkpoint.temp)
    except FileNotFoundError:  # removed by hand meanwhile: nothing left to retire
        return
    _remove(checkpoint.temp)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files and folders a killed writer left behind, matched by their exact name pattern only,
    and weights files whose checkpoint was never committed (the writer was killed between the two)."""
    try:
        names = set(os.listdir(folder))
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        orphan = (match := WEIGHTS_RE.match(name)) and checkpoint_name(int(match.group(1))) not in names
        if CHECKPOINT_TEMP_RE.match(name) or orphan:
            _remove(folder / name)
            removed.append(folder / name)
    return removed


def _remove(path: Path) -> None:
    """A file or folder; a symlink planted under a temp's name is removed itself, never what it points at."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
