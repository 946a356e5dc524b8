"""best/: the evaluated weights, exported when they beat the current best (shared/evaluation/export.py).

From the model in memory, before the outcome is written: train.py's retention may delete the
checkpoint file once the result is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from shared.config import Config
from shared.evaluation import export
from shared.protocol.layout import TrainDir
from shared.protocol.results import EvalResult
from shared.tasks import Task


@dataclass(frozen=True)
class ExportBest:
    train_dir: TrainDir
    task: Task
    model: nn.Module  # holds the weights of the checkpoint just evaluated
    config: Config

    def __call__(self, result: EvalResult) -> None:
        export.export_if_best(self.train_dir, self.task, self.model, self.config, result)
