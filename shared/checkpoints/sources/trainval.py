"""train.py's own checkpoints (the default source): `ckpt-<step:09d>.pt` beside its weights file, or an FSDP
folder `ckpt-<step:09d>/`, each committed by rename, so a name is complete (docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from shared.checkpoints.format import load_weights, restore_model
from shared.checkpoints.sources.base import CheckpointSource
from shared.checkpoints.store import Checkpoint, list_checkpoints
from shared.protocol.layout import checkpoint_step


class TrainvalCheckpoints(CheckpointSource):
    trainer_notes_deletions = True  # checkpoints/retired.jsonl
    named_when_complete = True

    def step_of(self, path: Path) -> int | None:
        return checkpoint_step(path)  # from the name alone: no stat

    def list(self, folder: Path) -> list[Checkpoint]:
        return list_checkpoints(folder)

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """Only the weights are read (from the weights file beside the checkpoint when there is one), on the
        CPU, bounded by what a checkpoint of `model` can hold: the checks on them cost no device round trips."""
        state = load_weights(path, model, within=within)
        restore_model(model, state)
        return state["step"]
