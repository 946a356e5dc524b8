"""The built-in demo: scikit-learn's bundled 8x8 digits (no download) and a small CNN."""

from __future__ import annotations

import functools

import torch
from pydantic import Field
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from shared import config
from shared.tasks import ClassificationTask


class DigitsModel(config.Section):
    channels: config.PositiveCount = Field(32, description="channels of the first convolution (the second has twice)")
    hidden: config.PositiveCount = Field(128, description="width of the hidden fully connected layer")
    dropout: config.Fraction = Field(0.2, description="dropout before each fully connected layer, in training only")


DigitsData = config.HoldoutData  # batch options plus the held-out fraction and its seed


@functools.cache
def _split(val_fraction: float, split_seed: int) -> tuple[torch.Tensor, ...]:
    """The fixed stratified train/validation split, as float images in [0, 1] and integer labels."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=val_fraction, stratify=labels, random_state=split_seed
    )
    return x_train, x_val, y_train, y_val


class DigitsTask(ClassificationTask):
    ModelConfig = DigitsModel
    DataConfig = DigitsData

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def build_model(self) -> nn.Module:
        c, m = self.model_config.channels, self.model_config
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(m.dropout),
            nn.Linear(2 * c * 4 * 4, m.hidden),
            nn.ReLU(),
            nn.Dropout(m.dropout),
            nn.Linear(m.hidden, 10),
        )

    def train_data(self) -> TensorDataset:
        x_train, _, y_train, _ = _split(self.data_config.val_fraction, self.data_config.split_seed)
        return TensorDataset(x_train, y_train)

    def eval_data(self) -> TensorDataset:
        _, x_val, _, y_val = _split(self.data_config.val_fraction, self.data_config.split_seed)
        return TensorDataset(x_val, y_val)
