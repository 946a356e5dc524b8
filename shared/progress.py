"""Progress for people: a tqdm bar with loss and LR on a terminal, plain log lines in logs and pipes."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

log = logging.getLogger("train")


class Progress:
    def __init__(self, start: int, total: int) -> None:
        self.total = total
        self.bar = tqdm(initial=start, total=total, unit="step", dynamic_ncols=True) if sys.stderr.isatty() else None

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
