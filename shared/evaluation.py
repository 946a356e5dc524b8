"""Scoring a checkpoint: the one code path the eval.py daemon and ad hoc runs share, so both give
exactly the same numbers for the same checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from shared import checkpoints, devices
from shared.config import Config
from shared.data import place
from shared.metrics import classification_metrics
from shared.tasks import Task, build_task


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
    """Builds the model and the evaluation data once, then scores any checkpoint made for them.

    In-memory data (a TensorDataset) is cut into batches by slicing, on the device when `on_device`;
    other datasets go through a DataLoader.
    """

    def __init__(
        self, task: Task, device: torch.device, batch_size: int, precision: str = "fp32", on_device: bool = False
    ) -> None:
        self.task, self.device, self.precision, self.batch_size = task, device, precision, batch_size
        self.model = task.build_model().to(device).eval()
        if task.channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.data = place(task.eval_data(), device, on_device)
        if on_device and isinstance(self.data, TensorDataset):  # NHWC once, not per batch
            inputs, *rest = self.data.tensors
            self.data = TensorDataset(devices.to_device(inputs, device, task.channels_last), *rest)

    @classmethod
    def from_config(cls, config: Config, device: torch.device) -> Evaluator:
        """The evaluator eval.py uses: the config's task, batch size, precision and data placement."""
        precision = devices.precision_for(device, config.eval.precision)
        return cls(build_task(config), device, config.eval.batch_size, precision, config.data.on_device)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.data, TensorDataset):
            return zip(*(t.split(self.batch_size) for t in self.data.tensors), strict=True)
        return iter(DataLoader(self.data, batch_size=self.batch_size, pin_memory=self.device.type == "cuda"))

    def evaluate_checkpoint(self, path: Path) -> Evaluation:
        """Raises CheckpointError for a file that cannot be used, FileNotFoundError if it vanished.

        The file is read on the CPU: only the weights go to the device, not the optimizer state, and the
        checks on them cost no device round trips.
        """
        state = checkpoints.load(path, map_location="cpu")
        checkpoints.restore_model(self.model, state)
        return self.evaluate(state["step"])

    @torch.inference_mode()
    def evaluate(self, step: int) -> Evaluation:
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        predictions, targets, probabilities = [], [], []
        for inputs, target in self.batches():
            inputs = devices.to_device(inputs, self.device, self.task.channels_last)
            target = target.to(self.device, non_blocking=True)
            with devices.autocast(self.device, self.precision):
                outputs = self.model(inputs)
                loss = self.task.loss(outputs, target)
            loss_sum += loss.double() * len(target)
            predictions.append(self.task.predict(outputs))
            probabilities.append(torch.softmax(outputs.float(), dim=-1))
            targets.append(target)
        y_true, y_pred = torch.cat(targets).cpu().numpy(), torch.cat(predictions).cpu().numpy()
        scores: dict[str, Any] = classification_metrics(y_true, y_pred, len(self.task.class_names))
        metrics = {"loss": float(loss_sum) / len(y_true)} | {
            k: v for k, v in scores.items() if k not in ("per_class_f1", "confusion_matrix")
        }
        return Evaluation(
            step,
            metrics,
            scores["per_class_f1"],
            scores["confusion_matrix"],
            y_true,
            torch.cat(probabilities).cpu().numpy(),
        )
