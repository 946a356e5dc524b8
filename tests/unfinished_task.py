"""A task left half-written (no model, no data), for the start-up check that names what is missing."""

from __future__ import annotations

from shared.tasks import Task


class UnfinishedTask(Task):
    @property
    def class_names(self) -> list[str]:
        return ["a", "b"]
