"""Scoring a checkpoint: the one code path the eval.py daemon and ad hoc runs share, so both give
exactly the same numbers for the same checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from shared.checkpoints.sources import TRAINVAL, CheckpointSource
from shared.config import Config
from shared.metrics.base import LOSS, value_of
from shared.protocol.artifacts import Artifact
from shared.protocol.results import EvalResult, SplitResult
from shared.runtime import devices
from shared.runtime.devices import place
from shared.tasks import Task
from shared.tasks.base import batches, check_model_fits
from shared.tasks.loading import build_model, build_task
from shared.tasks.splits import eval_splits


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
        source: CheckpointSource = TRAINVAL,
    ) -> None:
        self.task, self.device, self.precision, self.batch_size = task, device, precision, batch_size
        self.source = source
        self.model = build_model(task, device).eval()
        if task.channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        splits = splits or {"val": task.eval_data()}
        self.splits = {name: self._place(data, on_device) for name, data in splits.items()}
        check_model_fits(task, self.model, next(iter(self.splits.values())), device)

    def _place(self, dataset: Dataset, on_device: bool) -> Dataset:
        data = place(dataset, self.device, on_device)
        if on_device and isinstance(data, TensorDataset):  # NHWC once, not per batch
            inputs, *rest = data.tensors
            data = TensorDataset(devices.to_device(inputs, self.device, self.task.channels_last), *rest)
        return data

    @classmethod
    def from_config(cls, config: Config, device: torch.device, source: CheckpointSource = TRAINVAL) -> Evaluator:
        """The evaluator eval.py uses: the config's task, splits, batch size, precision and data placement;
        checkpoints read by `source`."""
        precision = devices.precision_for(device, config.eval.precision)
        task = build_task(config)
        named = eval_splits(task, config.eval.splits, config.eval.max_examples)
        return cls(task, device, config.eval.batch_size, precision, config.data.on_device, named, source)

    def load_checkpoint(self, path: Path, within: Path | None = None) -> int:
        """Load a checkpoint's weights into the model and return its step.

        Raises CheckpointError for a file that cannot be used (one that would unpack to more than a
        checkpoint of this model holds, or resolves outside `within`), FileNotFoundError if it vanished.
        """
        return self.source.restore(path, self.model, within)

    def evaluate(self, step: int, file: str = "") -> EvalResult:
        """The loaded weights (of checkpoint `step`, in `file`) scored on every split, in order."""
        started, wall_time = time.perf_counter(), time.time()
        splits = {name: self.evaluate_split(data) for name, data in self.splits.items()}
        return EvalResult(step, file, "ok", wall_time, round(time.perf_counter() - started, 4), splits)

    @torch.inference_mode()
    def evaluate_split(self, data: Dataset) -> SplitResult:
        """The loaded weights scored on one split's `data` by the task's loss and a fresh set of its metrics.
        Each batch's outputs go to the metrics and are dropped: memory stays one batch's."""
        task = self.task
        metrics = dict(task.build_metrics())
        for metric in metrics.values():
            if isinstance(metric, nn.Module):  # torchmetrics: its state lives on the outputs' device
                metric.to(self.device)
        loss_sum, examples = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for batch in batches(task, data, self.batch_size, pin_memory=self.device.type == "cuda"):
            inputs, targets = task.split(devices.to_device(batch, self.device, task.channels_last))
            with devices.autocast(self.device, self.precision):
                outputs = task.forward(self.model, inputs)
                loss = task.loss(outputs, targets)
            count = task.examples(inputs, targets)
            loss_sum += loss.double() * count
            examples += count
            for metric in metrics.values():
                metric.update(outputs, targets)
        scalars, artifacts = {LOSS: float(loss_sum) / examples}, {}
        for name, metric in metrics.items():
            value = value_of(name, metric.compute())
            if isinstance(value, Artifact):
                artifacts[name] = value
            else:
                scalars[name] = value
        return SplitResult(scalars, artifacts)
