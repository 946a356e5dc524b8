"""What every summary backend takes: one run's scalars, texts, images, HParams and PR-curve records.

train.py and eval.py write through a `Logger` and never name a backend; `shared.loggers.backends`
opens the ones the config lists (`log.backends`) for a run. A backend must keep two promises the
protocol relies on (docs/logging.md): after `flush()` returns, what was logged survives a crash; and a
process reopening a run at `purge_step` after a crash ends with one point per (tag, step), however much
of the redone work the crashed process had already logged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

HParam = int | float | str
# The overview dashboard: category -> chart title -> ["Multiline", [tag regex, ...]] (TensorBoard's shape).
Layout = Mapping[str, Mapping[str, list]]


class Logger(ABC):
    """One run's summaries (train/, eval/, eval_<split>/): what the loop calls, whatever the backend."""

    @abstractmethod
    def scalar(self, tag: str, value: float, step: int) -> None: ...

    @abstractmethod
    def text(self, tag: str, markdown: str, step: int) -> None: ...

    @abstractmethod
    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """`image`: HWC uint8 RGB."""

    @abstractmethod
    def hparams(self, values: Mapping[str, HParam]) -> None:
        """The run's hyper-parameters, once per run (the eval run's HParams session in TensorBoard)."""

    @abstractmethod
    def pr_curve(self, tag: str, positives: np.ndarray, negatives: np.ndarray, step: int) -> None:
        """One-vs-rest precision/recall of one class: how many of its positives and of its negatives had a
        probability for it in each of the equal buckets from 0 to 1 (what the evaluator keeps: its size
        does not grow with the examples)."""

    @abstractmethod
    def layout(self, layout: Layout) -> None:
        """The overview charts (TensorBoard's Custom Scalars), once per run."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything logged so far durable (before a checkpoint, after an evaluation)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullLogger(Logger):
    """Takes every record and keeps none: torchrun ranks other than 0 (one writer per run)."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def text(self, tag: str, markdown: str, step: int) -> None:
        pass

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        pass

    def hparams(self, values: Mapping[str, HParam]) -> None:
        pass

    def pr_curve(self, tag: str, positives: np.ndarray, negatives: np.ndarray, step: int) -> None:
        pass

    def layout(self, layout: Layout) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Fanout(Logger):
    """Several backends as one logger: each record goes to every one, in the configured order."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def scalar(self, tag: str, value: float, step: int) -> None:
        for logger in self.loggers:
            logger.scalar(tag, value, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        for logger in self.loggers:
            logger.text(tag, markdown, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        for logger in self.loggers:
            logger.image(tag, image, step)

    def hparams(self, values: Mapping[str, HParam]) -> None:
        for logger in self.loggers:
            logger.hparams(values)

    def pr_curve(self, tag: str, positives: np.ndarray, negatives: np.ndarray, step: int) -> None:
        for logger in self.loggers:
            logger.pr_curve(tag, positives, negatives, step)

    def layout(self, layout: Layout) -> None:
        for logger in self.loggers:
            logger.layout(layout)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
