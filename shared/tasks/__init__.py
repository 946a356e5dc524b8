"""The Task interface: everything train.py and eval.py need to know about one problem.

A task is chosen in the config by a built-in name (`task: digits`) or a dotted path to a class of your
own (`task: mypackage.module:MyTask`); shared/tasks/loading.py finds it. docs/tasks.md shows a complete one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from shared.config import DataConfig, ModelConfig


class Task(ABC):
    """A classification problem: a model, its training and evaluation data, a loss and predictions.

    Datasets yield `(inputs, target)` pairs. Subclasses may set `ModelConfig` and `DataConfig` to
    pydantic models of their own options (`shared.config.Section` and `shared.config.DataConfig`
    subclasses); the config's `model:` and `data:` sections are validated against them.
    """

    ModelConfig: ClassVar[type] = ModelConfig
    DataConfig: ClassVar[type] = DataConfig

    def __init__(self, model: Any, data: Any, seed: int) -> None:
        self.model_config = model
        self.data_config = data
        self.seed = seed

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """One name per class index; its length is the number of classes."""

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def train_data(self) -> Dataset: ...

    @abstractmethod
    def eval_data(self) -> Dataset: ...

    def test_data(self) -> Dataset | None:
        """A held-out test set for `eval.splits: [..., test]`; None when the task has none."""
        return None

    @property
    def channels_last(self) -> bool:
        """True for convolutional models, which run faster on CUDA with NHWC memory layout."""
        return False

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch."""
        return nn.functional.cross_entropy(outputs, targets)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class indices from model outputs, for the metrics."""
        return outputs.argmax(dim=-1)
