"""Which examples train and which evaluate: the named evaluation splits and the cross-validation folds.

train.py trains on `training_data(task)` and eval.py scores `eval_splits(...)`; both derive every subset
from the config alone (seeded), so the two processes, and every restart, agree on exactly the same
examples without writing any index to disk.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from shared.config import ConfigError
from shared.tasks import Task

_FOLD_SEED, _TRAIN_SPLIT_SEED, _MAX_EXAMPLES_SEED = 101, 202, 303  # distinct streams of one `seed`


def subset(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The examples at `indices`; an in-memory TensorDataset stays one, so it keeps the fast sliced path."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def sample(dataset: Dataset, size: int, seed: int) -> Dataset:
    """A fixed random subset of `size` examples (all of them when size is 0 or covers the dataset), in index order."""
    n = len(dataset)  # type: ignore[arg-type]
    if size <= 0 or size >= n:
        return dataset
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    return subset(dataset, chosen.sort().values)


def _folds(task: Task) -> tuple[Dataset, torch.Tensor, torch.Tensor] | None:
    """(the task's training set, indices trained on, held-out indices) under `data.folds`, or None when off."""
    folds, fold = task.data_config.folds, task.data_config.fold
    if folds <= 1:
        return None
    data = task.train_data()
    n = len(data)  # type: ignore[arg-type]
    if n < folds:
        raise ConfigError(f"data.folds: {folds} folds need at least {folds} training examples, the task has {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(task.seed * 1000 + _FOLD_SEED))
    parts = list(torch.tensor_split(order, folds))
    held_out = parts.pop(fold)
    return data, torch.cat(parts).sort().values, held_out.sort().values


def training_data(task: Task) -> Dataset:
    """What train.py trains on: the task's training set, less the held-out fold under `data.folds`."""
    split = _folds(task)
    return task.train_data() if split is None else subset(split[0], split[1])


def validation_data(task: Task) -> Dataset:
    """The `val` split: the task's evaluation set, or the held-out fold `data.fold` under `data.folds`."""
    split = _folds(task)
    return task.eval_data() if split is None else subset(split[0], split[2])


def eval_splits(task: Task, splits: list[str], max_examples: int) -> dict[str, Dataset]:
    """The named evaluation datasets, in the order listed (the first is the ledger's `metrics`).

    `train` is a fixed subset of the training set as large as `val`, so the two curves are comparable
    and evaluating it costs no more; `max_examples` (> 0) then caps every split to a fixed subset.
    """
    val = validation_data(task)
    named: dict[str, Any] = {}
    for name in splits:
        if name == "val":
            named[name] = val
        elif name == "train":
            named[name] = sample(training_data(task), len(val), task.seed * 1000 + _TRAIN_SPLIT_SEED)
        elif name == "test":
            named[name] = task.test_data()
            if named[name] is None:
                raise ConfigError(
                    f"eval.splits: lists 'test', but task {task.__class__.__name__} has no test_data(); "
                    "define test_data() in the task or drop 'test' from eval.splits"
                )
    return {name: sample(data, max_examples, task.seed * 1000 + _MAX_EXAMPLES_SEED) for name, data in named.items()}
