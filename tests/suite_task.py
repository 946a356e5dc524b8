"""A downstream evaluation for tests/test_suites.py: digits' own model (same model and data sections), scored on
other data (the training examples' first 200, flipped left to right) by other metrics (top-1 error)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from shared.metrics.base import Metric
from shared.tasks.digits import DigitsTask


class TopOneError:
    higher_is_better = False

    def __init__(self) -> None:
        self.wrong, self.seen = 0, 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.wrong += int((outputs.argmax(-1) != targets).sum())
        self.seen += len(targets)

    def compute(self) -> float:
        return self.wrong / max(self.seen, 1)

    def reset(self) -> None:
        self.wrong, self.seen = 0, 0


class FlippedDigits(DigitsTask):
    best_metric = "error"

    def eval_data(self) -> TensorDataset:
        images, labels = self.train_data().tensors
        return TensorDataset(images[:200].flip(-1), labels[:200])

    def build_metrics(self) -> dict[str, Metric]:
        return {"error": TopOneError()}
