"""The Task interface: everything train.py and eval.py need to know about one problem.

A task is chosen in the config by a built-in name (`task: digits`) or a dotted path to a class of your
own (`task: mypackage.module:MyTask`). The README shows a complete one.
"""

from __future__ import annotations

import importlib
import os
import sys
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from shared.config import ConfigError, DataConfig, ModelConfig

BUILTIN_TASKS = {"digits": "shared.tasks.digits:DigitsTask", "synthetic": "shared.tasks.synthetic:SyntheticTask"}


class Task(ABC):
    """A classification problem: a model, its training and evaluation data, a loss and predictions.

    Datasets yield `(inputs, target)` pairs. Subclasses may set `ModelConfig` and `DataConfig` to
    dataclasses of their own options (DataConfig must extend `shared.config.DataConfig`); the config's
    `model:` and `data:` sections are checked against them.
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


def task_class(name: str) -> type[Task]:
    """The Task class a config's `task:` names, or ConfigError saying why it cannot be loaded."""
    target = BUILTIN_TASKS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"task: {name!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) "
            "nor a dotted path like mypackage.module:MyTask"
        )
    if os.getcwd() not in sys.path:  # like `python -m`: a task in the current folder is importable
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"task: cannot import module {module_name!r} ({err}); install it or add its folder to PYTHONPATH"
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task: {target!r} is not a subclass of shared.tasks.Task")
    if not issubclass(cls.DataConfig, DataConfig):
        raise ConfigError(f"task: {target}.DataConfig must extend shared.config.DataConfig")
    return cls


def build_task(config: Any) -> Task:
    cls = task_class(config.task)
    return cls(config.model, config.data, config.seed)
