"""The built-in regression task: scikit-learn's bundled diabetes data (no download) and a small MLP.

442 patients, 10 standardised features, and a measure of disease progression one year later. The
model predicts in the target's own units (a fixed output scale and shift learned from nothing: the
training targets' mean and spread), so `mse` and `mae` read in those units; `loss` is the MSE in
units of the training targets' variance, which keeps the learning rate independent of that scale.
"""

from __future__ import annotations

import functools

import torch
from pydantic import Field
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from shared import config
from shared.metrics.base import Metric
from shared.metrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score
from shared.tasks.base import Task


class RegressionModel(config.Section):
    hidden: int = Field(0, ge=0, le=65_536, description="width of one hidden layer; 0: a linear model")
    dropout: config.Fraction = Field(0.0, description="dropout before the output, in training only")


RegressionData = config.HoldoutData  # batch options plus the held-out fraction and its seed


@functools.cache
def diabetes_split(val_fraction: float, split_seed: int) -> tuple[torch.Tensor, ...]:
    """The fixed train/validation split: float features and float targets."""
    data = load_diabetes()
    features = torch.tensor(data.data, dtype=torch.float32)
    targets = torch.tensor(data.target, dtype=torch.float32)
    return tuple(train_test_split(features, targets, test_size=val_fraction, random_state=split_seed))


class Rescale(nn.Module):
    """outputs * scale + shift, with both fixed (buffers, saved with the weights)."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("shift", torch.tensor(shift))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1) * self.scale + self.shift


class RegressionTask(Task):
    ModelConfig = RegressionModel
    DataConfig = RegressionData
    best_metric = "r2"  # ranks as mse does on one split, and reads the same on any scale (1: perfect)

    def _split(self) -> tuple[torch.Tensor, ...]:
        return diabetes_split(self.data_config.val_fraction, self.data_config.split_seed)

    def _target_moments(self) -> tuple[float, float]:
        targets = self._split()[2]
        return float(targets.mean()), float(targets.std())

    def build_model(self) -> nn.Module:
        m = self.model_config
        mean, std = self._target_moments()
        if m.hidden:
            body: nn.Module = nn.Sequential(
                nn.Linear(10, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, 1)
            )
        else:
            body = nn.Linear(10, 1)
        return nn.Sequential(body, Rescale(std, mean))

    def train_data(self) -> TensorDataset:
        x_train, _, y_train, _ = self._split()
        return TensorDataset(x_train, y_train)

    def eval_data(self) -> TensorDataset:
        _, x_val, _, y_val = self._split()
        return TensorDataset(x_val, y_val)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, targets) / self._target_moments()[1] ** 2

    def build_metrics(self) -> dict[str, Metric]:
        return {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()}
