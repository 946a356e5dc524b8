"""Tasks with dropout over every kind of training data, for tests/test_resume.py: a resumed run must draw the
same dropout masks (and augmentations) as an uninterrupted one, whatever feeds its batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from tests.custom_task import BlobsTask
from tests.lines_task import PAD, ByteGRU, Lines, LinesTask


class DropoutBlobsTask(BlobsTask):
    """An in-memory TensorDataset, sliced without a DataLoader."""

    def build_model(self) -> nn.Module:
        hidden = self.model_config.hidden
        return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 3))


class DropoutLinesTask(LinesTask):
    """docs/tasks.md's LinesTask (a map-style Dataset and the task's own collate) with one nn.Dropout(0.1)."""

    def build_model(self) -> nn.Module:
        model = ByteGRU(self.model_config.hidden)
        model.embed = nn.Sequential(model.embed, nn.Dropout(0.1))
        return model


class HFLinesTask(DropoutLinesTask):
    """The lines as a Hugging Face `datasets.Dataset` of {"text": ...} rows, made into batches by collate."""

    def _rows(self, split: int) -> Any:
        import datasets

        lines = self._lines(split).lines
        return datasets.Dataset.from_dict({"text": [bytes(line.tolist()).decode() for line in lines]})

    def train_data(self) -> Any:
        return self._rows(split=0)

    def eval_data(self) -> Any:
        return self._rows(split=1)

    def collate(self, items: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = [torch.tensor(list(item["text"].encode())) for item in items]
        return super().collate([(line[:-1], line[1:]) for line in encoded])


class MaskedLines(Lines):
    """Lines whose inputs have one byte in ten masked at random (torch's global RNG): an augmentation drawn
    wherever the example is read, a DataLoader worker when `data.num_workers` > 0."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = super().__getitem__(index)
        return inputs.masked_fill(torch.rand(len(inputs)) < 0.1, PAD), targets


class AugmentedLinesTask(DropoutLinesTask):
    """Dropout, and a random augmentation in the Dataset: run with data.num_workers > 0."""

    def train_data(self) -> Dataset:
        return MaskedLines([bytes(line.tolist()).decode() for line in self._lines(split=0).lines])


class Stream(IterableDataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.data)


class StreamBlobsTask(BlobsTask):
    """Training data as a stream (an IterableDataset), which has no position to resume from."""

    def train_data(self) -> Dataset:
        return Stream(super().train_data())
