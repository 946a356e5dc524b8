"""`hf`: the Hugging Face Trainer's `checkpoint-<N>/` folders in its output_dir; N is the Trainer's global step.

What marks one complete is transformers' own order (Trainer._save_checkpoint, transformers 5.x): the model is
saved first (save_model: `model.safetensors`, or sharded `model-0000i-of-0000n.safetensors` with
`model.safetensors.index.json`, or `pytorch_model.bin` with save_safetensors off), then the optimizer,
scheduler and RNG states, then `trainer_state.json` (TrainerState.save_to_json, written in place), and only
then may rotate_checkpoints delete older folders under save_total_limit. So a folder whose
`trainer_state.json` parses as a whole JSON object with `global_step` N is complete; before that it is
skipped and asked again at the next scan. A folder deleted by save_total_limit before it was evaluated is a
`skipped` record saying so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from shared.checkpoints.format import guarded
from shared.checkpoints.sources.base import FORMAT, CheckpointSource, SourceSection, restore_fitted
from shared.checkpoints.sources.files import read_weights_file
from shared.errors import CheckpointError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR, then the step
TRAINER_STATE = "trainer_state.json"  # written last
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_STATE_BYTES = 64 * 2**20


def read_trainer_state(folder: Path) -> dict[str, Any] | None:
    """The folder's trainer_state.json, or None while it is absent or not yet whole."""
    try:
        with open(folder / TRAINER_STATE, "rb") as f:
            state = json.loads(f.read(MAX_STATE_BYTES))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


class HFCheckpoints(CheckpointSource):
    def step_of(self, path: Path) -> int | None:
        match = CHECKPOINT_RE.match(path.name)
        return int(match.group(1)) if match and read_trainer_state(path) is not None else None

    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """The weights the Trainer saved, by safetensors (sharded ones through their index) or, for a
        `pytorch_model.bin`, torch.load(weights_only=True); tied and prefixed keys fitted (fit_state_dict)."""
        return guarded(path, within, lambda: self._restore(path, model, within))

    def _restore(self, path: Path, model: nn.Module, within: Path | None) -> int:
        state = read_trainer_state(path)
        if state is None:
            if not path.exists():
                raise FileNotFoundError(path)
            raise CheckpointError(f"no whole {TRAINER_STATE} (not a Trainer checkpoint, or one being written)")
        weights = next((path / name for name in WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            if not path.exists():
                raise FileNotFoundError(path)
            raise CheckpointError(f"holds none of {', '.join(WEIGHTS)}")
        restore_fitted(self._read(weights, model, within), model)
        return state["global_step"]

    def _read(self, weights: Path, model: nn.Module, within: Path | None) -> dict[str, Any]:
        if not weights.name.endswith(".index.json"):
            return read_weights_file(weights, model, within)
        try:
            shards = json.loads(weights.read_bytes())["weight_map"]
            files = sorted(set(shards.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{weights.name}: not a shard index ({err})") from None
        state: dict[str, Any] = {}
        for name in files:
            if not isinstance(name, str) or Path(name).name != name:
                raise CheckpointError(f"{weights.name} names {name!r}, not a file beside it; not read")
            state.update(read_weights_file(weights.parent / name, model, within))
        return state


class HFSource(SourceSection):
    """source.format hf: a transformers Trainer's output_dir (--train-dir) and its checkpoint-<N>/ folders."""

    format: Literal["hf"] = Field(description=FORMAT)
    logdir: str | None = Field(
        "runs",
        description="the folder of the Trainer's TensorBoard runs (relative to where the results go; its "
        "logging_dir's parent, transformers' default: output_dir/runs): the eval runs go beside them",
    )

    def build(self) -> HFCheckpoints:
        return HFCheckpoints()
