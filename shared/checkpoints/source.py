"""Where the eval side gets its checkpoints: one interface, one implementation per checkpoint format.

A CheckpointSource names a folder's committed checkpoints by step (a name it accepts is complete: how a
checkpoint becomes complete is the format's own rule), lists them in step order, and loads one's weights
into a model. `trainval` (this project's files and FSDP folders, committed by rename: docs/protocol.md) is
the only one now; another trainer's checkpoints (Hugging Face, Lightning, DCP) are one class beside it with
the same three methods, and its name in SOURCES.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import nn

from shared.checkpoints.format import load_weights, restore_model
from shared.checkpoints.store import Checkpoint, list_checkpoints
from shared.protocol.layout import checkpoint_step


class CheckpointSource(Protocol):
    def step_of(self, name: str) -> int | None:
        """The step of the committed checkpoint named `name` in its folder; None for anything else (temps)."""

    def list(self, folder: Path) -> list[Checkpoint]:
        """The folder's committed checkpoints, in step order."""

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """Load the weights of the checkpoint at `path` into `model` (strictly) and return its step.
        CheckpointError for one that cannot be used (or resolves outside `within`), FileNotFoundError if gone."""


class TrainvalCheckpoints:
    """train.py's own checkpoints: `ckpt-<step:09d>.pt` with its weights file beside it, or an FSDP folder."""

    def step_of(self, name: str) -> int | None:
        return checkpoint_step(name)

    def list(self, folder: Path) -> list[Checkpoint]:
        return list_checkpoints(folder)

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """Only the weights are read (from the weights file beside the checkpoint when there is one), on the
        CPU, bounded by what a checkpoint of `model` can hold: the checks on them cost no device round trips."""
        state = load_weights(path, model, within=within)
        restore_model(model, state)
        return state["step"]


SOURCES: dict[str, CheckpointSource] = {"trainval": TrainvalCheckpoints()}
