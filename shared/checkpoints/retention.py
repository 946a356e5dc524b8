"""Which checkpoints train.py keeps after each commit: a policy made of small rules, each keeping some.

A rule looks at the committed steps (and at what the evaluator has done, from its ledger) and names the
steps it keeps; the policy keeps what any rule keeps and retires the rest. Rules run in order and each
sees what the earlier ones kept, so a rule such as "keep up to N unevaluated" spends its allowance only
on steps nothing else keeps. A new rule is a class with a `keep` method, added to `RetentionPolicy.rules`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.checkpoints.store import Checkpoint, list_checkpoints, retire
from shared.config import CheckpointConfig
from shared.protocol import numbers
from shared.protocol.claims import this_evaluator
from shared.protocol.files import append_line, fsync_dir
from shared.protocol.layout import DEFAULT_SUITE, RETIRED_NOTES
from shared.protocol.results import EvalResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluatorProgress:
    """What a suite's ledger says about its evaluators; `newest` is None when none keeps a ledger (none joined)."""

    newest: int | None  # the newest recorded step (-1: none yet), whatever its status
    results: Mapping[int, EvalResult] = field(default_factory=dict)  # the ok results by step (for KeepBest)
    selects: Callable[[int], bool] = lambda step: True  # the suite's schedule: the steps it evaluates at all
    name: str = DEFAULT_SUITE
    limit: int = 0  # its max_unevaluated, for a named suite (the default suite's is the policy's)

    def unevaluated(self, steps: Sequence[int]) -> list[int]:
        """The steps the suite selects and has not reached yet (none without an evaluator: nobody waits for them)."""
        return [] if self.newest is None else [s for s in steps if s > self.newest and self.selects(s)]


class Rule(Protocol):
    def keep(self, steps: Sequence[int], progress: EvaluatorProgress, kept: frozenset[int]) -> set[int]:
        """The steps (sorted, committed) this rule keeps, given what the rules before it kept."""
        ...


@dataclass(frozen=True)
class KeepLatest:
    """The newest `n`: train.py resumes from the newest, so `n` >= 1."""

    n: int

    def keep(self, steps: Sequence[int], progress: EvaluatorProgress, kept: frozenset[int]) -> set[int]:
        return set(steps[-self.n :])


@dataclass(frozen=True)
class KeepEveryNSteps:
    """Every multiple of `n` steps, for good (0: none)."""

    n: int

    def keep(self, steps: Sequence[int], progress: EvaluatorProgress, kept: frozenset[int]) -> set[int]:
        return {s for s in steps if s % self.n == 0} if self.n > 0 else set()


@dataclass(frozen=True)
class KeepBest:
    """The `n` best evaluated steps by the first split's `metric`, ranked as best/ ranks them (0: none)."""

    n: int
    metric: str
    higher_is_better: bool

    def keep(self, steps: Sequence[int], progress: EvaluatorProgress, kept: frozenset[int]) -> set[int]:
        scored = [r for s in steps if (r := progress.results.get(s)) is not None and r.value(self.metric) is not None]
        ranked = sorted(scored, key=functools.cmp_to_key(self._order))
        return {result.step for result in ranked[: self.n]}

    def _order(self, a: EvalResult, b: EvalResult) -> int:
        return -1 if a.beats(b, self.metric, self.higher_is_better) else 1


@dataclass(frozen=True)
class KeepUnevaluated:
    """Up to `limit` of the oldest steps the evaluator has not reached and no other rule keeps, so a slower
    evaluator still gets them; the limit bounds the disk a stalled or abandoned evaluator can cost. Each named
    suite has its own (`suite`: its progress, and its limit); without one, the default suite's."""

    limit: int
    suite: EvaluatorProgress | None = None

    def keep(self, steps: Sequence[int], progress: EvaluatorProgress, kept: frozenset[int]) -> set[int]:
        progress = self.suite or progress
        return set([s for s in progress.unevaluated(steps) if s not in kept][: self.limit])


@dataclass(frozen=True)
class RetentionPolicy:
    """checkpoint.max_to_keep, keep_every_n_steps, keep_best and max_unevaluated, as rules in that order."""

    max_to_keep: int
    keep_every_n_steps: int = 0
    max_unevaluated: int = 0
    best: KeepBest | None = None

    @classmethod
    def from_options(
        cls, options: CheckpointConfig, best_metric: str | None = None, higher_is_better: bool = False
    ) -> RetentionPolicy:
        """The checkpoint section's policy; keep_best ranks by `best_metric` (eval.best_metric) in its direction
        (EvalConfig.best_higher_is_better; the default is loss's)."""
        ranked = options.keep_best > 0 and best_metric is not None
        best = KeepBest(options.keep_best, best_metric, higher_is_better) if ranked else None
        return cls(options.max_to_keep, options.keep_every_n_steps, options.max_unevaluated, best)

    @property
    def rules(self) -> tuple[Rule, ...]:
        latest, multiples = KeepLatest(self.max_to_keep), KeepEveryNSteps(self.keep_every_n_steps)
        return (latest, multiples, *([self.best] if self.best else []), KeepUnevaluated(self.max_unevaluated))

    def to_delete(
        self,
        steps: Sequence[int],
        last_evaluated: int | None,
        results: Mapping[int, EvalResult] | None = None,
        suites: Sequence[EvaluatorProgress] = (),
    ) -> tuple[list[int], list[int]]:
        """(steps to delete, of those the ones the default suite, or a named one in `suites` that selects them,
        has not reached yet). Each named suite keeps up to its own limit of the steps it has not reached."""
        steps, progress = sorted(steps), EvaluatorProgress(last_evaluated, results or {})
        kept: set[int] = set()
        for rule in (*self.rules, *(KeepUnevaluated(suite.limit, suite) for suite in suites)):
            kept |= rule.keep(steps, progress, frozenset(kept))
        delete = [s for s in steps if s not in kept]
        lacking = {s for each in (progress, *suites) for s in each.unevaluated(delete)}
        return delete, [s for s in delete if s in lacking]

    def why_unrecorded(self, evaluator_joined: bool, suite: EvaluatorProgress | None = None) -> str:
        """The skipped record's reason for a checkpoint retired before the evaluator (of `suite`, a named one
        that lacks it, if given) recorded it."""
        if suite is not None:
            return (
                f"retired by train.py before suite {suite.name} recorded it (suites.{suite.name}.max_unevaluated="
                f"{suite.limit} reached): raise it, or run more of its evaluators"
            )
        if not evaluator_joined:
            return (
                f"retired by train.py before any evaluator joined (checkpoint.max_to_keep={self.max_to_keep}): "
                "keep more, or start eval.py with train.py"
            )
        return (
            f"retired by train.py before evaluation (checkpoint.max_unevaluated={self.max_unevaluated} reached): "
            "raise it, or run more evaluators"
        )


def apply_retention(
    folder: Path,
    policy: RetentionPolicy,
    last_evaluated: int | None,
    results: Mapping[int, EvalResult] | None = None,
    suites: Sequence[EvaluatorProgress] = (),
) -> list[int]:
    """Retire what the policy lets go, after the newest checkpoint is committed; return the retired steps.

    A checkpoint an evaluator has not recorded (none has joined: no ledger; or the max_unevaluated cap; or a
    named suite in `suites` that selects it, past its own cap) is first noted in `retired.jsonl` as a skipped
    record, whole and fsynced, so the step is never missing from a ledger without a word (each suite's
    recorder copies the notes of the steps it selects and lacks: shared.evaluation.coordination)."""
    checkpoints = list_checkpoints(folder)
    delete, unevaluated = policy.to_delete([c.step for c in checkpoints], last_evaluated, results, suites)
    default = EvaluatorProgress(last_evaluated)
    if lacking := default.unevaluated(delete):
        log.warning(
            "checkpoint.max_unevaluated=%d reached: deleting steps %s before the evaluator reached them",
            policy.max_unevaluated,
            lacking,
        )
    for suite in suites:
        if lacking := suite.unevaluated(delete):
            log.warning(
                "suites.%s.max_unevaluated=%d reached: deleting steps %s before that suite reached them",
                suite.name,
                suite.limit,
                lacking,
            )
    unrecorded = set(delete if last_evaluated is None else unevaluated)
    deleted = []
    for checkpoint in checkpoints:
        if checkpoint.step in delete:
            try:
                if checkpoint.step in unrecorded:
                    lacking = next((p for p in (default, *suites) if p.unevaluated([checkpoint.step])), default)
                    named = None if lacking is default else lacking
                    note_retired(folder, checkpoint, policy.why_unrecorded(last_evaluated is not None, named))
                retire(checkpoint)
                deleted.append(checkpoint.step)
            except OSError as err:  # a retention failure never costs a checkpoint; the next save tries again
                log.warning("could not delete %s: %s", checkpoint.path.name, err.strerror)
    if deleted:
        fsync_dir(folder)
    return deleted


def note_retired(folder: Path, checkpoint: Checkpoint, reason: str) -> None:
    """Append the skipped record of a checkpoint about to be retired unrecorded (before it goes: a crash
    between the two leaves a note for a checkpoint still there, which the evaluator then evaluates)."""
    file = f"{folder.name}/{checkpoint.path.name}"  # relative to the train_dir, as the ledger names files
    record = EvalResult(checkpoint.step, file, "skipped", time.time(), reason=reason, evaluator=this_evaluator())
    append_line(folder / RETIRED_NOTES, numbers.dumps(record.to_record(), sort_keys=True))
