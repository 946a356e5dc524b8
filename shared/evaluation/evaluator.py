"""Scoring a checkpoint: the one code path the eval.py daemon and ad hoc runs share, so both give
exactly the same numbers for the same checkpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from shared.checkpoints.format import load_weights, restore_model
from shared.config import Config
from shared.evaluation.splits import eval_splits
from shared.metrics.classification import classification_metrics
from shared.protocol.results import EvalResult, SplitResult
from shared.runtime import devices
from shared.tasks import Task
from shared.tasks.loading import build_model, build_task
from shared.training.data import place


class Evaluator:
    """Builds the model and the evaluation splits once, then scores any checkpoint made for them.

    `splits` maps names to datasets (default: the task's evaluation set as `val`); one loaded
    checkpoint is scored on each. In-memory data (a TensorDataset) is cut into batches by slicing, on
    the device when `on_device`; other datasets go through a DataLoader.
    """

    def __init__(
        self,
        task: Task,
        device: torch.device,
        batch_size: int,
        precision: str = "fp32",
        on_device: bool = False,
        splits: dict[str, Dataset] | None = None,
    ) -> None:
        self.task, self.device, self.precision, self.batch_size = task, device, precision, batch_size
        self.model = build_model(task, device).eval()
        if task.channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        splits = splits or {"val": task.eval_data()}
        self.splits = {name: self._place(data, on_device) for name, data in splits.items()}

    def _place(self, dataset: Dataset, on_device: bool) -> Dataset:
        data = place(dataset, self.device, on_device)
        if on_device and isinstance(data, TensorDataset):  # NHWC once, not per batch
            inputs, *rest = data.tensors
            data = TensorDataset(devices.to_device(inputs, self.device, self.task.channels_last), *rest)
        return data

    @classmethod
    def from_config(cls, config: Config, device: torch.device) -> Evaluator:
        """The evaluator eval.py uses: the config's task, splits, batch size, precision and data placement."""
        precision = devices.precision_for(device, config.eval.precision)
        task = build_task(config)
        named = eval_splits(task, config.eval.splits, config.eval.max_examples)
        return cls(task, device, config.eval.batch_size, precision, config.data.on_device, named)

    def batches(self, data: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(data, TensorDataset):
            return zip(*(t.split(self.batch_size) for t in data.tensors), strict=True)
        return iter(DataLoader(data, batch_size=self.batch_size, pin_memory=self.device.type == "cuda"))

    def load_checkpoint(self, path: Path, within: Path | None = None) -> int:
        """Load a checkpoint's weights into the model and return its step.

        Raises CheckpointError for a file that cannot be used (one that would unpack to more than a
        checkpoint of this model holds, or resolves outside `within`), FileNotFoundError if it vanished.
        Only the weights are read (from the weights file beside the checkpoint when there is one), on the
        CPU: the checks on them cost no device round trips.
        """
        state = load_weights(path, self.model, within=within)
        restore_model(self.model, state)
        return state["step"]

    def evaluate(self, step: int, file: str = "") -> EvalResult:
        """The loaded weights (of checkpoint `step`, in `file`) scored on every split, in order."""
        started, wall_time = time.perf_counter(), time.time()
        splits = {name: self.score(data) for name, data in self.splits.items()}
        return EvalResult(step, file, "ok", wall_time, round(time.perf_counter() - started, 4), splits)

    @torch.inference_mode()
    def score(self, data: Dataset) -> SplitResult:
        """The loaded weights scored on one split's `data`."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        predictions, targets, probabilities = [], [], []
        for inputs, target in self.batches(data):
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
        return SplitResult(
            metrics, scores["per_class_f1"], scores["confusion_matrix"], y_true, torch.cat(probabilities).cpu().numpy()
        )
