"""A task whose training data holds NaN inputs, for train.nan_policy tests."""

from __future__ import annotations

from pydantic import Field
from torch.utils.data import TensorDataset

from tests.custom_task import BlobsData, BlobsTask


class PoisonedData(BlobsData):
    nan_examples: int = Field(1, ge=0, le=1_000_000)  # this many training inputs become NaN


class PoisonedBlobsTask(BlobsTask):
    DataConfig = PoisonedData

    def train_data(self) -> TensorDataset:
        data = super().train_data()
        data.tensors[0][: self.data_config.nan_examples] = float("nan")
        return data
