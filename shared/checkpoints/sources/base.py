"""What every checkpoint format shares: the CheckpointSource interface, and fitting a foreign state dict.

A CheckpointSource is the one place that knows a checkpoint format. It gives the step of a folder's entry once
that is a complete checkpoint (the format's own rule: committed by rename, a marker its trainer writes last, a
file whose index is written last), lists the complete ones in step order, and loads one's weights into the
task's model, strictly. A format is one module
in this package with a Section subclass (`format: Literal[...]`, its options, `build()`) listed in FORMATS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from shared.checkpoints.format import restore_model
from shared.checkpoints.store import Checkpoint, list_by_step
from shared.config import Section


class CheckpointSource(ABC):
    # Whether the trainer itself notes each checkpoint it deletes before it is recorded (train.py's
    # checkpoints/retired.jsonl). A foreign trainer does not: the scan notes those it saw, as `skipped`.
    trainer_notes_deletions = False
    # Whether a checkpoint's name appears only once it is complete (committed by rename), so a name is asked
    # once; otherwise a name that is not yet a checkpoint is asked again at each scan until it is.
    named_when_complete = False

    @abstractmethod
    def step_of(self, path: Path) -> int | None:
        """The step of the complete checkpoint at `path` (a folder's entry); None while it is being written,
        and for anything else. Cheap: it is asked of each new name, and again of an incomplete one."""

    def folder(self, root: Path) -> Path:
        """Where a foreign run's checkpoints are, given its folder (--train-dir)."""
        return root

    def list(self, folder: Path) -> list[Checkpoint]:
        """The folder's complete checkpoints, in step order."""
        return list_by_step(folder, self.step_of)

    @abstractmethod
    def restore(self, path: Path, model: nn.Module, within: Path | None = None) -> int:
        """Load the weights of the checkpoint at `path` into `model` (strictly) and return its step.
        CheckpointError for one that cannot be used (or resolves outside `within`), FileNotFoundError if gone."""


FORMAT = "the checkpoints' format (docs/foreign-runs.md)"


class SourceSection(Section):
    """The `source:` section of an eval.yaml: `format` chooses the subclass; `logdir` where the eval curves go."""

    format: str = Field(description=FORMAT)
    logdir: str | None = Field(
        None,
        description="the folder of the trainer's TensorBoard runs (relative to where the results go): the eval runs "
        "go beside them; null: eval/ beside the ledger",
    )
    mlflow_run_id: str | None = Field(
        None, description="the trainer's MLflow run, which the evaluation then logs into (log.backends: mlflow)"
    )

    def build(self) -> CheckpointSource:
        raise NotImplementedError


def fit_state_dict(state: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """A foreign state dict keyed as `model` keys its own, then loaded strictly by restore_model.

    Two differences are mended, nothing else: a leading prefix one side has and the other lacks (a
    wrapper's `model.`, e.g. a state dict saved from the wrapper, loaded into the bare model, or back), and
    a tied weight stored once (transformers' save_pretrained drops `lm_head.weight`, tied to the input
    embeddings): a missing key whose parameter shares its storage with one present takes that one's tensor.
    """
    expected = model.state_dict()
    state = _match_prefix(state, expected.keys())
    tied = _tied_names(model)
    for name in expected.keys() - state.keys():
        partner = next((other for other in tied.get(name, ()) if other in state), None)
        if partner is not None:
            state[name] = state[partner]
    return state


def restore_fitted(state: dict[str, Any], model: nn.Module) -> None:
    """Load a foreign state dict into `model` strictly (fit_state_dict, then restore_model's checks)."""
    restore_model(model, {"model": fit_state_dict(state, model)})


def _match_prefix(state: dict[str, Any], wanted: Any) -> dict[str, Any]:
    wanted = set(wanted)
    if not state or wanted <= state.keys() or not wanted:
        return state
    for prefix in _common_prefixes(state.keys()):  # the file's keys carry a prefix the model's lack
        stripped = {name[len(prefix) :]: value for name, value in state.items()}
        if stripped.keys() & wanted and len(stripped.keys() & wanted) > len(state.keys() & wanted):
            return stripped
    for prefix in _common_prefixes(wanted):  # the model's keys carry one the file's lack
        added = {prefix + name: value for name, value in state.items()}
        if len(added.keys() & wanted) > len(state.keys() & wanted):
            return added
    return state


def _common_prefixes(names: Any) -> list[str]:
    """The dotted prefixes every name shares (`model.`, `model.backbone.`), shortest first."""
    split = [name.split(".")[:-1] for name in names]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return [".".join(common[: i + 1]) + "." for i in range(len(common))]


def _tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Each parameter or buffer name -> the other names of the same tensor (tied weights)."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_tensor.setdefault(id(tensor), []).append(name)
    return {name: [o for o in names if o != name] for names in by_tensor.values() if len(names) > 1 for name in names}
