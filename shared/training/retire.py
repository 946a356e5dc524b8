"""Which checkpoints go after each save: the retention rules (shared/checkpoints/retention.py) applied
with what every evaluation suite had recorded when the save began.

The ledger is read in the training thread at each save (collectively under torchrun), and what it held
then is what retention runs on in the writing thread, once the new checkpoint is committed: a checkpoint
the evaluator reaches meanwhile is kept one save longer, never deleted before it is recorded.

The named suites (shared/checkpoints/suites.py) are read the same way, by rank 0 alone (it alone retires):
those of config.yaml's `suites:` and those whose daemons joined with options of their own (eval-NAME/suite.json,
a suite added by eval.py's --set). Each keeps, up to its own max_unevaluated, the checkpoints its schedule
selects that it has not recorded; a suite no daemon has joined yet keeps none, as the default suite before
its first evaluator.
"""

from __future__ import annotations

import functools

from shared import config as cfg
from shared.checkpoints.retention import EvaluatorProgress, RetentionPolicy, apply_retention
from shared.checkpoints.suites import suites
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import LedgerTail
from shared.training.checkpoint_writer import Retire
from shared.training.ledger_reader import LedgerReader


class Retirer:
    def __init__(
        self, train_dir: TrainDir, policy: RetentionPolicy, ledger: LedgerReader, config: cfg.Config | None = None
    ) -> None:
        self.train_dir, self.folder, self.policy, self.ledger = train_dir, train_dir.checkpoints, policy, ledger
        self.config = config  # its suites:, and the defaults of a suite found on disk; None: the default suite only
        self._tails: dict[str, LedgerTail] = {}  # each named suite's ledger, read on

    def at_save(self) -> Retire:
        """What retires old checkpoints once this save is committed, by the ledgers as of now."""
        self.ledger.poll()  # retention keeps what the evaluator has not reached by now
        evaluated = (self.ledger.newest, dict(self.ledger.results))  # as of now, for the writing thread
        named = self._named_suites() if self.ledger.group.is_main else []
        return functools.partial(apply_retention, self.folder, self.policy, *evaluated, named)

    def _named_suites(self) -> list[EvaluatorProgress]:
        """Each named suite's progress: the newest step its ledger holds (None before a daemon joined it)."""
        found: list[EvaluatorProgress] = []
        for name, suite in suites(self.train_dir, self.config).items() if self.config else ():
            if suite.default:
                continue
            tail = self._tails.setdefault(name, LedgerTail(suite.places.results))
            newest = None if tail.poll() is None else tail.newest
            found.append(EvaluatorProgress(newest, {}, suite.schedule.selects, name, suite.max_unevaluated))
        return found

    def retired(self, steps: list[int]) -> None:
        """These steps' checkpoints are gone: their results no longer rank against newer ones."""
        self.ledger.forget(steps)
