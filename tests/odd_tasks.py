"""Tasks that are not plain classifiers, or that go wrong, for the tests of the general Task interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from shared.metrics.base import Metric
from shared.metrics.regression import MeanSquaredError
from shared.tasks import Task
from tests.custom_task import BlobsTask

BOOM = 1234.0  # a checkpoint whose first bias is this makes FailingBlobsTask's forward raise


class NarrowBlobsTask(BlobsTask):
    """class_names lists four classes, but the model outputs three values."""

    @property
    def class_names(self) -> list[str]:
        return ["a", "b", "c", "d"]

    def build_model(self) -> nn.Module:
        return nn.Linear(2, 3)


class MislabelledBlobsTask(BlobsTask):
    """Two classes and a two-wide model, but the data's labels go up to 2."""

    @property
    def class_names(self) -> list[str]:
        return ["a", "b"]

    def build_model(self) -> nn.Module:
        return nn.Linear(2, 2)


class LosslessBlobsTask(BlobsTask):
    """Task's default loss, the model's own `outputs.loss`, for a model that returns a plain tensor."""

    loss = Task.loss


class FailingBlobsTask(BlobsTask):
    """The task's own code raises on the weights of one checkpoint (its first bias set to BOOM)."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        if float(model[0].bias[0]) == BOOM:
            raise RuntimeError("the blob model cannot take these weights")
        return model(inputs)


class NaNBlobsTask(BlobsTask):
    """The model's outputs are NaN on the weights of one checkpoint (its first bias set to BOOM): a real NaN
    loss, as a diverged checkpoint gives, for that checkpoint only."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        outputs = model(inputs)
        return outputs * float("nan") if float(model[0].bias[0]) == BOOM else outputs


class OneLogitTask(BlobsTask):
    """A binary classifier with one logit and BCE: blob a against the rest."""

    @property
    def class_names(self) -> list[str]:
        return ["rest", "a"]

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))

    def train_data(self) -> Dataset:
        points, labels = super().train_data().tensors
        return torch.utils.data.TensorDataset(points, (labels == 0).long())

    def eval_data(self) -> Dataset:
        points, labels = super().eval_data().tensors
        return torch.utils.data.TensorDataset(points, (labels == 0).long())


class Sequences(Dataset):
    """Variable-length sequences of 2-d points; the target is the mean of their first coordinates."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, 8, (count,), generator=generator)
        self.items = [torch.randn(int(n), 2, generator=generator) for n in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        points = self.items[index]
        return points, points[:, 0].mean()


class MaskedMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Linear(2, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        values = self.weight(inputs["points"]).squeeze(-1) * inputs["mask"]
        return values.sum(dim=1) / inputs["mask"].sum(dim=1)


class DictSequenceTask(Task):
    """Dict inputs of padded variable-length sequences, made by the task's own collate."""

    def build_model(self) -> nn.Module:
        return MaskedMean()

    def train_data(self) -> Dataset:
        return Sequences(200, self.seed)

    def eval_data(self) -> Dataset:
        return Sequences(50, self.seed + 1)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        points = nn.utils.rnn.pad_sequence([p for p, _ in items], batch_first=True)
        mask = nn.utils.rnn.pad_sequence([torch.ones(len(p)) for p, _ in items], batch_first=True)
        return {"points": points, "mask": mask}, torch.stack([t for _, t in items])

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, targets)

    def build_metrics(self) -> dict[str, Metric]:
        return {"mse": MeanSquaredError()}


class TopThreeTask(BlobsTask):
    """A torchmetrics metric as it is, beside the classification ones: top-3 accuracy over 5 classes."""

    @property
    def class_names(self) -> list[str]:
        return ["a", "b", "c", "d", "e"]

    def build_model(self) -> nn.Module:
        return nn.Linear(2, 5)

    def build_metrics(self) -> dict[str, Metric]:
        from torchmetrics.classification import MulticlassAccuracy

        return {**super().build_metrics(), "top3": MulticlassAccuracy(num_classes=5, top_k=3, average="micro")}


class MisnamedBestTask(BlobsTask):
    """Declares a best metric that its metrics do not measure."""

    best_metric = "top3"
