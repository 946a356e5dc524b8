"""torch.distributed.checkpoint (DCP) folders of another trainer: torchtitan's `step-<N>/`, OLMo-core's
`step<N>/model_and_optim/`, any layout with `{step}` in its folder name.

DCP writes each rank's data files straight into the folder, under their final names; once every rank's
write returned, the coordinator (rank 0) writes `.metadata` to `.metadata.tmp` (fsynced when the writer
syncs files, its default) and renames it into place (torch 2.13: `_save_state_dict` gathers every rank's
write results to rank 0, whose `FileSystemWriter.finish` writes it). So a folder is complete once its
`.metadata` exists, and until then it is not listed.

The weights are the entries under the model's key prefix (`model.` where the trainer saved
`{"model": model.state_dict(), ...}`; empty where the model's names are top-level, as torchtitan's now
are): only the model's own names are read, in this one process with no process group, through
shared.checkpoints.sharded's reader (its `.metadata` unpickler builds only DCP's classes, and a pickled
entry is refused, so a folder can never run code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from shared.checkpoints.format import guarded, restore_model
from shared.checkpoints.sources.base import FORMAT, CheckpointSource, SourceSection
from shared.checkpoints.sources.lightning import under_prefix
from shared.errors import CheckpointError, ConfigError
from shared.protocol.layout import METADATA


class DcpCheckpoints(CheckpointSource):
    """Step folders named by `pattern` (`step-{step}`; `step{step}/model_and_optim` when the DCP folder is
    inside the step's), each complete once DCP's `.metadata` is in its DCP folder."""

    def __init__(self, pattern: str = "step-{step}", prefix: str = "model.") -> None:
        name, _, self.inside = pattern.partition("/")
        if name.count("{step}") != 1 or "{step}" in self.inside:
            raise ConfigError(f"source.pattern {pattern!r}: its first folder's name holds `{{step}}` once")
        self.name_re = re.compile("^" + re.escape(name).replace(re.escape("{step}"), r"(\d+)") + "$")
        self.prefix = prefix
        # DCP's reader, imported now (a second or more of start-up, while a daemon waits) rather than at the
        # first checkpoint, whose record it would delay; not at module level: every eval.py start would pay it.
        from shared.checkpoints import sharded

        self.sharded = sharded

    def step_of(self, name: str | os.PathLike) -> int | None:
        """The step of the complete DCP checkpoint at `name` (a path); None while DCP writes it, or for other
        names."""
        match = self.name_re.match(os.path.basename(name))
        if match and os.path.exists(Path(name, self.inside, METADATA)):
            return int(match.group(1))
        return None

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """The model's weights (its names under the prefix) read from the folder into `model`, strictly; the
        step of the folder's name."""
        step = self.step_of(path)
        if step is None:
            if not Path(path).exists():
                raise FileNotFoundError(path)
            raise CheckpointError(f"not a complete DCP checkpoint: no {Path(path, self.inside, METADATA)}")
        weights = guarded(path, within, lambda: self._read(Path(path, self.inside), model))
        restore_model(model, {"model": weights})
        return step

    def _read(self, folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        reader, metadata = self.sharded.read_metadata(folder)
        entries = metadata.state_dict_metadata
        named = under_prefix(entries, self.prefix) if self.prefix else []  # empty: top-level, among others
        # Beside the model's own names, those under the prefix that it lacks: restore_model names them.
        wanted = {self.prefix + key for key in model.state_dict()} | set(named)
        weights: dict[str, torch.Tensor] = {}
        for fqn in sorted(wanted & entries.keys()):
            item = entries[fqn]
            if not hasattr(item, "properties"):  # BytesStorageMetadata: a pickled object, not a tensor
                raise CheckpointError(f"entry {fqn!r} is not a tensor in {folder / METADATA}")
            weights[fqn] = torch.empty(item.size, dtype=item.properties.dtype)
        self.sharded.read_tensors(weights, reader, folder)
        return {fqn[len(self.prefix) :]: tensor for fqn, tensor in weights.items()}


class DcpSource(SourceSection):
    """source.format dcp: step folders written with torch.distributed.checkpoint (torchtitan, OLMo-core)."""

    format: Literal["dcp"] = Field(description=FORMAT)
    pattern: str = Field(
        "step-{step}", description="the step folders' names, {step} once (step{step}/model_and_optim: DCP's inside)"
    )
    prefix: str = Field("model.", description="the model's key prefix in the saved state dict; empty: top-level")

    def build(self) -> DcpCheckpoints:
        return DcpCheckpoints(self.pattern, self.prefix)
