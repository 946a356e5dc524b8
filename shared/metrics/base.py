"""The metric protocol, and how the evaluator turns a task's metrics into named results.

A metric is any object with `update(outputs, targets)`, `compute()` and `higher_is_better`, which is
torchmetrics' `Metric` protocol, so a torchmetrics metric works as it is (torchmetrics is not a
dependency). `compute()` returns a number or a 0-d tensor (a *scalar*, which is plotted, recorded in
the ledger and may steer training), or an `Artifact` (a confusion matrix, PR curves: plotted and handed
between evaluators, never compared).

Metrics stream: they see one batch at a time and keep what they need to compute their value, so an
evaluation's memory is bounded by a batch's outputs unless a metric chooses to keep more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from shared.config import LOSS
from shared.protocol.artifacts import Artifact


@runtime_checkable
class Metric(Protocol):
    """What `Task.build_metrics()` returns per name; a fresh one for every split of every evaluation."""

    higher_is_better: bool | None  # None: not a score (an artifact); it cannot steer anything

    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> Any: ...


def directions(metrics: Mapping[str, Metric]) -> dict[str, bool]:
    """Name -> higher_is_better of every metric that can steer training or choose the best: loss and the
    task's scalar metrics (those whose direction is known)."""
    known = {name: bool(m.higher_is_better) for name, m in metrics.items() if m.higher_is_better is not None}
    return {LOSS: False} | known


def value_of(name: str, value: Any) -> float | Artifact:
    """A metric's computed value as a plain float, or the artifact it computed; TypeError for anything else."""
    if isinstance(value, Artifact):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"metric {name!r} computed a {type(value).__name__}; compute() must return a number or 0-d tensor")


class Mean:
    """A streaming weighted mean in float64. The sums stay tensors on the batches' device until `value()`,
    so updating costs no host synchronisation."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.weight: torch.Tensor | float = 0.0

    def add(self, total: torch.Tensor | float, weight: torch.Tensor | float) -> None:
        self.total = self.total + (total.double() if isinstance(total, torch.Tensor) else total)
        self.weight = self.weight + weight

    def value(self) -> float:
        weight = float(self.weight)
        return float(self.total) / weight if weight else float("nan")
