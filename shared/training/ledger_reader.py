"""train.py's one reader of the evaluator's ledger, shared by retention, feedback and `eval_lag`.

It reads at log steps and saves only, with a stat and a read of the appended bytes (shared.protocol.ledger
`LedgerTail`), never blocking a step. Under torchrun rank 0 reads and every rank receives what it read
(a broadcast), so all ranks see the same results at the same steps.
"""

from __future__ import annotations

from shared.protocol.layout import TrainDir
from shared.protocol.ledger import LedgerTail
from shared.protocol.results import EvalResult
from shared.training.distributed import Distributed


class LedgerReader:
    def __init__(self, train_dir: TrainDir, group: Distributed | None = None, keep_results: bool = False) -> None:
        self.group = group or Distributed.alone()
        self.newest: int | None = None  # the newest recorded step (-1: none yet); None: no evaluator keeps a ledger
        self.results: dict[int, EvalResult] = {}  # with keep_results, the ok ones by step, until forgotten
        self._keep_results = keep_results
        self._tail = LedgerTail(train_dir.results)
        self._unread: list[EvalResult] = []  # read, not yet taken by feedback

    def poll(self) -> None:
        """Read what the ledger gained. Collective under torchrun: every rank calls it at the same step."""
        results, self.newest = self.group.broadcast(self._read() if self.group.is_main else None)
        self._unread += results
        if self._keep_results:
            self.results.update((r.step, r) for r in results if r.status == "ok")

    def forget(self, steps: list[int]) -> None:
        """Drop the kept results of these steps (their checkpoints are gone)."""
        for step in steps:
            self.results.pop(step, None)

    def take(self) -> list[EvalResult]:
        """The results read since the last call, in ledger order."""
        taken, self._unread = self._unread, []
        return taken

    def lag(self, step: int) -> int | None:
        """`eval_lag`: `step` minus the newest evaluated step; None while no evaluator keeps a ledger."""
        return None if self.newest is None else step - max(self.newest, 0)

    def _read(self) -> tuple[list[EvalResult], int | None]:
        results = self._tail.poll()
        return results or [], None if results is None else self._tail.newest
