"""What a train_dir keeps for life, and what a later start may change.

The identity is whatever decides what a checkpoint contains and which examples are trained on and which
evaluated: the task, `seed` (it picks the folds and the task's own splits), the model and the data. A
change to it on resume would score a "validation" set that training saw, so it is refused.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.config.schema import Config
from shared.errors import ConfigError

IDENTITY_KEYS = ("task", "seed", "model", "data")
RUNTIME_KEYS = ("data.num_workers", "data.on_device")  # how the data is loaded, not which


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested sections as one mapping of dotted keys, e.g. {'train.lr': 0.003}."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, child in value.items():
            items.update(flatten(child, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): value}


def differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Every flattened key whose value differs, as key -> (old, new)."""
    a, b = flatten(old), flatten(new)
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def _listed(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def is_identity(key: str) -> bool:
    return key.split(".")[0] in IDENTITY_KEYS and key not in RUNTIME_KEYS


def check_same_identity(saved: Config, new: Config, what: str) -> dict[str, tuple[Any, Any]]:
    """Refuse a config whose task, seed, model or data differ from the train_dir's; return the other changes."""
    changed = differences(saved, new)
    identity = {key: change for key, change in changed.items() if is_identity(key)}
    if identity:
        raise ConfigError(
            f"{what} differs from the train_dir's config.yaml in what decides the model and its examples "
            f"({_listed(identity)}); use a new --train-dir, or drop these changes"
        )
    return changed


def check_eval_only(saved: Config, new: Config, what: str) -> dict[str, tuple[Any, Any]]:
    """eval.py: refuse any change outside the eval section and the suites (it would be ignored, or change the
    model)."""
    changed = check_same_identity(saved, new, what)
    outside = {key: change for key, change in changed.items() if not key.startswith(("eval.", "suites."))}
    if outside:
        raise ConfigError(
            f"{what} may change the eval section only ({_listed(outside)}), and suites:; the others come from the "
            "train_dir's config.yaml: leave them out here (train.py takes them, and records them there)"
        )
    return changed
