"""A user's own task, chosen with `task: tests.custom_task:BlobsTask`: docs/tasks.md's classifier, tested."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from shared.config import DataConfig, Section
from shared.tasks import ClassificationTask


class BlobsModel(Section):
    hidden: int = Field(32, ge=1, le=4096)


class BlobsData(DataConfig):
    examples: int = Field(600, ge=30, le=1_000_000)


class BlobsTask(ClassificationTask):
    """Three Gaussian blobs in 2-D, told apart by a small MLP."""

    ModelConfig = BlobsModel
    DataConfig = BlobsData

    @property
    def class_names(self) -> list[str]:
        return ["a", "b", "c"]

    def build_model(self) -> nn.Module:
        hidden = self.model_config.hidden
        return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def _blobs(self, split: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(self.seed * 10 + split)
        labels = torch.arange(self.data_config.examples) % 3
        centres = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
        points = centres[labels] + torch.randn(len(labels), 2, generator=generator)
        return TensorDataset(points, labels)

    def train_data(self) -> TensorDataset:
        return self._blobs(split=0)

    def eval_data(self) -> TensorDataset:
        return self._blobs(split=1)
