"""Tasks that cannot be used as they are, for the checks at start-up that name what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

from shared.tasks import ClassificationTask
from tests.custom_task import BlobsTask


class UnfinishedTask(ClassificationTask):
    """No model and no data yet."""

    @property
    def class_names(self) -> list[str]:
        return ["a", "b"]


@dataclass
class DataclassModel:
    hidden: int = 32


class DataclassSectionsTask(BlobsTask):
    """Written before the config moved to pydantic: its section is a dataclass."""

    ModelConfig = DataclassModel
