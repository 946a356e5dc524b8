"""What every summary backend takes (scalars, texts, images), and the records only some can show.

train.py and eval.py write through a `Logger` and never name a backend; `shared.loggers.backends`
opens the ones the config lists (`log.backends`) for a run. A backend must keep two promises the
protocol relies on (docs/logging.md): after `flush()` returns, what was logged survives a crash; and a
process reopening a run at `purge_step` after a crash ends with one point per (tag, step), however much
of the redone work the crashed process had already logged.

PR curves, HParams and the overview layout are capabilities a backend declares by having the method
(`LogsPRCurves`, `LogsHParams`, `LogsLayout`); a caller checks `isinstance(logger, LogsPRCurves)`
first, so a backend with no view for a record never has to pretend to take it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

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
    def flush(self) -> None:
        """Make everything logged so far durable (before a checkpoint, after an evaluation)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class LogsPRCurves(Protocol):
    def pr_curve(self, tag: str, positives: np.ndarray, negatives: np.ndarray, step: int) -> None:
        """One-vs-rest precision/recall of one class: how many of its positives and of its negatives had a
        probability for it in each of the equal buckets from 0 to 1 (what the evaluator keeps: its size
        does not grow with the examples)."""


@runtime_checkable
class LogsHParams(Protocol):
    def hparams(self, values: Mapping[str, HParam]) -> None:
        """The run's hyper-parameters, once per run (the eval run's HParams session in TensorBoard)."""


@runtime_checkable
class LogsLayout(Protocol):
    def layout(self, layout: Layout) -> None:
        """The overview charts (TensorBoard's Custom Scalars), once per run."""


class NullLogger(Logger):
    """Takes every record and keeps none: torchrun ranks other than 0 (one writer per run)."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def text(self, tag: str, markdown: str, step: int) -> None:
        pass

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Fanout(Logger):
    """Several backends as one logger: each record goes to every one that takes it, in the configured order.

    It declares every capability and passes an optional record on to the backends that declare it.
    """

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
            if isinstance(logger, LogsHParams):
                logger.hparams(values)

    def pr_curve(self, tag: str, positives: np.ndarray, negatives: np.ndarray, step: int) -> None:
        for logger in self.loggers:
            if isinstance(logger, LogsPRCurves):
                logger.pr_curve(tag, positives, negatives, step)

    def layout(self, layout: Layout) -> None:
        for logger in self.loggers:
            if isinstance(logger, LogsLayout):
                logger.layout(layout)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
