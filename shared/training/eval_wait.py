"""train.max_eval_lag: after a save, train.py waits while more checkpoints than that await evaluation.

Only checkpoints on disk count, so one deleted by retention (checkpoint.max_unevaluated) can never be
waited for; without a ledger there is no evaluator to wait for, and a stop request ends the wait. While
it waits it keeps the heartbeat fresh (waiting on purpose is not being stuck), while the train_dir is
still this run's (`check_folders`). Under torchrun rank 0
decides at each poll and the other ranks follow it poll by poll: no collective waits long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shared.checkpoints.store import list_checkpoints
from shared.protocol.layout import TrainDir
from shared.runtime import health
from shared.runtime.signals import StopRequest
from shared.training.distributed import Distributed
from shared.training.ledger_reader import LedgerReader

log = logging.getLogger(__name__)

WAIT_POLL_SECS = 0.2  # how often the ledger is read again while waiting


class EvaluatorWait:
    def __init__(
        self,
        train_dir: TrainDir,
        ledger: LedgerReader,
        max_eval_lag: int,
        stop: StopRequest,
        group: Distributed,
        check_folders: Callable[[], None] = lambda: None,
    ) -> None:
        self.train_dir, self.ledger, self.lag, self.stop, self.group = train_dir, ledger, max_eval_lag, stop, group
        self.check_folders = check_folders

    def __call__(self, step: int) -> bool:
        """Wait, after the committed save of `step`, until the evaluator is close enough; whether it waited.
        Every rank calls it at the same steps."""
        started, waited = time.monotonic(), False
        while True:
            self.ledger.poll()
            behind = self.group.broadcast(self._behind() if self.group.is_main else None)
            if not behind:
                break
            if not waited:
                log.info("waiting for eval.py: %s not evaluated yet (train.max_eval_lag=%d)", behind, self.lag)
                waited = True
            if self.group.is_main:
                self.check_folders()
                health.write_heartbeat(self.train_dir.heartbeat, step)
            time.sleep(WAIT_POLL_SECS)
        if waited:
            log.info("waited %.1fs for eval.py", time.monotonic() - started)
        return waited

    def _behind(self) -> list[int]:
        """Rank 0: the checkpoints to wait for (none on a stop request, or without a ledger, or when no more
        than train.max_eval_lag await evaluation)."""
        newest = self.ledger.newest
        if self.stop or newest is None:
            return []
        behind = [c.step for c in list_checkpoints(self.train_dir.checkpoints) if c.step > newest]
        return behind if len(behind) > self.lag else []
