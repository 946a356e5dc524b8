"""A task whose training data holds NaN inputs, for train.nan_policy tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import TensorDataset

from shared.config import at_least
from tests.custom_task import BlobsData, BlobsTask


@dataclass
class PoisonedData(BlobsData):
    nan_examples: int = field(default=1, metadata=at_least(0))  # this many training inputs become NaN


class PoisonedBlobsTask(BlobsTask):
    DataConfig = PoisonedData

    def train_data(self) -> TensorDataset:
        data = super().train_data()
        data.tensors[0][: self.data_config.nan_examples] = float("nan")
        return data
