"""Regression metrics over every output element, streamed as float64 sums (scikit-learn's definitions)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from shared.metrics.base import Mean


def _errors(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.double().reshape(-1) - targets.double().reshape(-1)


class _MeanPenalty:
    """The mean of `penalty(output - target)` over every element; lower is better."""

    higher_is_better = False
    penalty: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self) -> None:
        self.mean = Mean()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        errors = _errors(outputs, targets)
        self.mean.add(type(self).penalty(errors).sum(), errors.numel())

    def compute(self) -> float:
        return self.mean.value()


class MeanSquaredError(_MeanPenalty):
    penalty = torch.square


class MeanAbsoluteError(_MeanPenalty):
    penalty = torch.abs


class R2Score:
    """1 - residual sum of squares / total sum of squares (the targets' spread around their own mean)."""

    higher_is_better = True

    def __init__(self) -> None:
        self.residual, self.targets, self.target_squares = Mean(), Mean(), Mean()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        target = targets.double().reshape(-1)
        self.residual.add(_errors(outputs, targets).square().sum(), target.numel())
        self.targets.add(target.sum(), target.numel())
        self.target_squares.add(target.square().sum(), target.numel())

    def compute(self) -> float:
        variance = self.target_squares.value() - self.targets.value() ** 2
        return 1.0 - self.residual.value() / variance if variance > 0 else float("nan")
