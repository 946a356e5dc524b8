"""train.py's checkpoints, as one component the loop asks at each step: `due(step)`, then `save`; and
`finish` at the end.

It composes the pieces, each its own module: when (shared.training.save_policy), the NaN/Inf refusal
(shared.training.nonfinite: nothing computed from a non-finite loss is saved), the writing
(shared.training.checkpoint_writer), retention after each commit (shared.training.retire), and waiting
for a lagging evaluator (shared.training.eval_wait). Before each save it also runs `before_save`
(train.py flushes its run there, so a resume never loses the points up to its checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shared.training.checkpoint_writer import CheckpointWriter, Committed
from shared.training.eval_wait import EvaluatorWait
from shared.training.nonfinite import NonFiniteGuard
from shared.training.retire import Retirer
from shared.training.save_policy import SavePolicy

State = dict[str, Any]


class Checkpointer:
    def __init__(
        self,
        policy: SavePolicy,
        writer: CheckpointWriter,
        retirer: Retirer,
        guard: NonFiniteGuard,
        *,
        last_step: int,
        before_save: Sequence[Callable[[], None]] = (),
        wait: EvaluatorWait | None = None,
    ) -> None:
        """`last_step`: train.steps (a save there is final: waited for, and its failure ends the run)."""
        self.policy, self.writer, self.retirer, self.guard = policy, writer, retirer, guard
        self.last_step, self.before_save, self.wait = last_step, before_save, wait
        self.requested = writer.newest  # the newest step saved or being saved: never twice

    def due(self, step: int) -> bool:
        """Whether to save at this step; every rank asks at every step (some policies agree between ranks)."""
        return self.policy.due(step)

    def save(self, step: int, state: State) -> None:
        """Save `state` as `step`'s checkpoint; then, unless it is the last step, wait for a lagging evaluator.
        Every rank calls it at the same steps."""
        self._save(step, state, final=step >= self.last_step)

    def finish(self, step: int, state: Callable[[], State]) -> None:
        """At the end of training (finished or stopped): the last save, unless this step has one; it must
        commit, or the run fails."""
        if step > self.requested and self.policy.due(step, end=True):
            self._save(step, state(), final=True)
        self._settled(self.writer.close())

    def _save(self, step: int, state: State, *, final: bool) -> None:
        self._settled(self.writer.settle())  # the save in flight first: a refusal never abandons it half-written
        self.guard.check()  # nothing computed from NaN/Inf is saved
        for call in self.before_save:
            call()
        retire = self.retirer.at_save()
        self.policy.saved()
        self.requested = step
        self._settled(self.writer.write(step, state, retire, final=final))
        if not final and self.wait is not None:
            self._settled(self.writer.settle())  # committed, so the evaluator can reach it
            if self.wait(step):
                self.policy.saved()  # no step was taken meanwhile: not a reason for a save by time

    def _settled(self, committed: Committed | None) -> None:
        if committed is not None:
            self.retirer.retired(committed.retired)
            self.guard.committed(committed.step)
