"""The result as an outcome file in eval/pending/, for the recorder to put into the ledger and the eval runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.protocol.outcomes import write_outcome
from shared.protocol.results import EvalResult


@dataclass(frozen=True)
class WriteOutcome:
    pending: Path  # the train_dir's eval/pending/

    def __call__(self, result: EvalResult) -> None:
        write_outcome(self.pending, result)
