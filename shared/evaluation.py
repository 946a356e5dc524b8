"""Scoring a checkpoint: the one code path the eval.py daemon and ad hoc runs share, so both give
exactly the same numbers for the same checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from shared import checkpoints
from shared.metrics import classification_metrics
from shared.tasks import Task


@dataclass
class Evaluation:
    step: int
    metrics: dict[str, float]  # loss and the scalars in shared.metrics.SCALARS
    per_class_f1: list[float]
    confusion_matrix: list[list[int]]
    # For the PR curves: the true class and the softmax of the outputs, per example. Left out of ==
    # (arrays do not compare to one bool); the fields above already say whether two results agree.
    targets: np.ndarray | None = field(default=None, compare=False, repr=False)
    probabilities: np.ndarray | None = field(default=None, compare=False, repr=False)


class Evaluator:
    """Builds the model and the evaluation data once, then scores any checkpoint made for them."""

    def __init__(self, task: Task, device: torch.device, batch_size: int) -> None:
        self.task, self.device = task, device
        self.model = task.build_model().to(device).eval()
        self.loader = DataLoader(task.eval_data(), batch_size=batch_size, pin_memory=device.type == "cuda")

    def evaluate_checkpoint(self, path: Path) -> Evaluation:
        """Raises CheckpointError for a file that cannot be used, FileNotFoundError if it vanished."""
        state = checkpoints.load(path, map_location=self.device)
        checkpoints.restore_model(self.model, state)
        return self.evaluate(state["step"])

    @torch.inference_mode()
    def evaluate(self, step: int) -> Evaluation:
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        predictions, targets, probabilities = [], [], []
        for inputs, target in self.loader:
            inputs = inputs.to(self.device, non_blocking=True)
            target = target.to(self.device, non_blocking=True)
            outputs = self.model(inputs)
            loss_sum += self.task.loss(outputs, target).double() * len(target)
            predictions.append(self.task.predict(outputs).cpu())
            probabilities.append(torch.softmax(outputs.float(), dim=-1).cpu())
            targets.append(target.cpu())
        y_true, y_pred = torch.cat(targets).numpy(), torch.cat(predictions).numpy()
        scores: dict[str, Any] = classification_metrics(y_true, y_pred, len(self.task.class_names))
        metrics = {"loss": float(loss_sum) / len(y_true)} | {
            k: v for k, v in scores.items() if k not in ("per_class_f1", "confusion_matrix")
        }
        return Evaluation(
            step, metrics, scores["per_class_f1"], scores["confusion_matrix"], y_true, torch.cat(probabilities).numpy()
        )
