"""Progress for people: a tqdm bar with loss and LR on a terminal, plain log lines in logs and pipes."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

log = logging.getLogger("train")


class Progress:
    """`shown` by one process only (rank 0 under torchrun); the others' bars would overwrite it."""

    def __init__(self, start: int, total: int, shown: bool = True) -> None:
        self.total = total
        terminal = shown and sys.stderr.isatty()
        self.bar = tqdm(initial=start, total=total, unit="step", dynamic_ncols=True) if terminal else None

    def advance(self) -> None:
        if self.bar:
            self.bar.update(1)

    def report(self, step: int, scalars: dict[str, float]) -> None:
        if self.bar:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
        else:
            log.info("step %d/%d %s", step, self.total, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def close(self) -> None:
        if self.bar:
            self.bar.close()
