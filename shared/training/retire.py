"""Which checkpoints go after each save: the retention rules (shared/checkpoints/retention.py) applied
with what the evaluator had recorded when the save began.

The ledger is read in the training thread at each save (collectively under torchrun), and what it held
then is what retention runs on in the writing thread, once the new checkpoint is committed: a checkpoint
the evaluator reaches meanwhile is kept one save longer, never deleted before it is recorded.
"""

from __future__ import annotations

import functools

from shared.checkpoints.retention import RetentionPolicy, apply_retention
from shared.protocol.layout import TrainDir
from shared.training.checkpoint_writer import Retire
from shared.training.ledger_reader import LedgerReader


class Retirer:
    def __init__(self, train_dir: TrainDir, policy: RetentionPolicy, ledger: LedgerReader) -> None:
        self.folder, self.policy, self.ledger = train_dir.checkpoints, policy, ledger

    def at_save(self) -> Retire:
        """What retires old checkpoints once this save is committed, by the ledger as of now."""
        self.ledger.poll()  # retention keeps what the evaluator has not reached by now
        evaluated = (self.ledger.newest, dict(self.ledger.results))  # as of now, for the writing thread
        return functools.partial(apply_retention, self.folder, self.policy, *evaluated)

    def retired(self, steps: list[int]) -> None:
        """These steps' checkpoints are gone: their results no longer rank against newer ones."""
        self.ledger.forget(steps)
