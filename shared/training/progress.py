"""Progress for people: a tqdm bar with the step, its rate and the loss on a terminal, plain log lines with
every scalar in logs and pipes; and the training scalars of each log interval."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import torch
from tqdm import tqdm

from shared.loggers.base import Logger
from shared.training.distributed import Distributed
from shared.training.nonfinite import NonFiniteGuard

log = logging.getLogger(__name__)

BAR_MAX_COLUMNS = 120  # on a wider terminal the line stops here: a longer bar tells nothing more


class CappedBar(tqdm):
    """tqdm as wide as the terminal, up to BAR_MAX_COLUMNS."""

    @property
    def format_dict(self) -> dict[str, Any]:
        found = super().format_dict
        found["ncols"] = min(found["ncols"] or BAR_MAX_COLUMNS, BAR_MAX_COLUMNS)
        return found


class Progress:
    """`shown` by one process only (rank 0 under torchrun); the others' bars would overwrite it.

    The bar's postfix holds the loss only (the dashboards have the rest): with every scalar of the log line,
    tqdm squeezed the bar itself to one character at 100 columns. `file` and `columns`: another terminal
    than stderr's."""

    def __init__(
        self, start: int, total: int, shown: bool = True, file: TextIO | None = None, columns: int | None = None
    ) -> None:
        self.total = total
        file = file or sys.stderr
        terminal = shown and (columns is not None or file.isatty())
        self.bar = (
            CappedBar(initial=start, total=total, unit="step", file=file, ncols=columns, dynamic_ncols=columns is None)
            if terminal
            else None
        )

    def advance(self) -> None:
        if self.bar:
            self.bar.update(1)

    def report(self, step: int, scalars: dict[str, float]) -> None:
        if self.bar:
            self.bar.set_postfix(loss=f"{scalars['loss']:.4g}", refresh=False)
        else:
            log.info("step %d/%d %s", step, self.total, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def close(self) -> None:
        if self.bar:
            self.bar.close()


class TrainLog:
    """train.py's log line every `log.every_steps`: the interval's loss (the mean over its steps and the
    ranks), the LR, the gradient norm and the examples (and, for tasks that count them, tokens) per second
    of all ranks, to the train run and the progress display. The sums stay on the device between log
    steps, so steps need no host sync. Nothing computed from a NaN/Inf loss is logged: the guard is checked
    first."""

    def __init__(
        self,
        logger: Logger,
        progress: Progress,
        guard: NonFiniteGuard,
        group: Distributed,
        device: torch.device,
        every_steps: int,
    ) -> None:
        self.logger, self.progress, self.guard, self.group = logger, progress, guard, group
        self.every_steps = every_steps  # log.every_steps
        self.loss, self.examples, self.steps = torch.zeros((), device=device), 0, 0
        self.tokens: int | torch.Tensor | None = None  # None: the task counts no tokens
        self.started = time.perf_counter()

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def add(self, loss: torch.Tensor, examples: int, tokens: int | torch.Tensor | None = None) -> None:
        self.loss += loss
        self.examples += examples
        self.steps += 1
        if tokens is not None:
            self.tokens = (self.tokens or 0) + tokens

    def write(self, step: int, lr: float, grad_norm: torch.Tensor) -> None:
        """Log the interval that ends at `step` and start the next one; collective under torchrun."""
        self.guard.check()
        elapsed = time.perf_counter() - self.started
        counts = [
            torch.as_tensor(n, dtype=torch.float64, device=self.loss.device) for n in (self.examples, self.tokens or 0)
        ]
        loss_sum, examples, tokens = self.group.sum_(torch.stack([self.loss.double(), *counts])).tolist()
        scalars = {
            "loss": loss_sum / self.group.world_size / self.steps,
            "learning_rate": lr,
            "grad_norm": grad_norm.item(),
            "examples_per_sec": examples / elapsed,
        }
        if self.tokens is not None:
            scalars["tokens_per_sec"] = tokens / elapsed
        for tag, value in scalars.items():
            self.logger.scalar(tag, value, step)
        self.progress.report(step, scalars)
        self.loss.zero_()
        self.examples, self.steps, self.tokens, self.started = 0, 0, None, time.perf_counter()
