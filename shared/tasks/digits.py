"""The built-in demo: scikit-learn's bundled 8x8 digits (no download) and a small CNN.

The data is read from scikit-learn's own file and split as its `train_test_split(stratify=...)` splits it,
without importing scikit-learn: that import (SciPy, pandas) cost about 3 CPU-seconds at every start of
train.py and eval.py, more than torch's own. tests/test_builtin_tasks.py checks the split against it.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from shared import config
from shared.tasks import ClassificationTask


class DigitsModel(config.Section):
    channels: config.PositiveCount = Field(32, description="channels of the first convolution (the second has twice)")
    hidden: config.PositiveCount = Field(128, description="width of the hidden fully connected layer")
    dropout: config.Fraction = Field(0.2, description="dropout before each fully connected layer, in training only")


DigitsData = config.HoldoutData  # batch options plus the held-out fraction and its seed


def digits_file() -> Path:
    """scikit-learn's bundled digits (what `sklearn.datasets.load_digits` reads), found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.origin is not None, "scikit-learn is a dependency of trainval"
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


def approximate_mode(class_counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` each class gets, in proportion, ties broken by `rng`: scikit-learn's
    `_approximate_mode`, draw for draw."""
    continuous = class_counts / class_counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices as `sklearn.model_selection.train_test_split(..., test_size=test_fraction,
    stratify=labels, random_state=seed)` chooses them (its StratifiedShuffleSplit, draw for draw)."""
    test = math.ceil(test_fraction * len(labels))
    train = len(labels) - test
    _, inverse, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = approximate_mode(class_counts, train, rng)
    test_counts = approximate_mode(class_counts - train_counts, test, rng)
    train_indices: list[int] = []
    test_indices: list[int] = []
    for members, n_train, n_test in zip(by_class, train_counts, test_counts, strict=True):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        train_indices.extend(shuffled[:n_train])
        test_indices.extend(shuffled[n_train : n_train + n_test])
    return rng.permutation(train_indices), rng.permutation(test_indices)


@functools.cache
def _split(val_fraction: float, split_seed: int) -> tuple[torch.Tensor, ...]:
    """The fixed stratified train/validation split, as float images in [0, 1] and integer labels."""
    data = np.loadtxt(digits_file(), delimiter=",")
    images = torch.tensor(data[:, :-1].reshape(-1, 1, 8, 8), dtype=torch.float32) / 16.0
    labels = data[:, -1].astype(int)
    train, val = (torch.from_numpy(indices) for indices in stratified_split(labels, val_fraction, split_seed))
    targets = torch.tensor(labels, dtype=torch.long)
    return images[train], images[val], targets[train], targets[val]


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
