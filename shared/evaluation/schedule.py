"""Which checkpoints an evaluator takes, and in what order (`eval.policy`): the evaluation schedule.

A schedule sees the free checkpoints (listed, unrecorded, no outcome waiting, no live claim), oldest first,
and returns those to record as skipped, each with the reason its ledger line gives, and those to try to
claim, in order: the evaluator evaluates the first it claims. A new schedule is one function here and its
name in SCHEDULES (EvalConfig.policy lists the names a config may give).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shared.checkpoints.store import Checkpoint


@dataclass(frozen=True)
class Plan:
    skip: list[tuple[Checkpoint, str]] = field(default_factory=list)  # (checkpoint, why), recorded as skipped
    candidates: list[Checkpoint] = field(default_factory=list)  # to claim in this order; the first claimed is evaluated


Schedule = Callable[[list[Checkpoint]], Plan]


def every_checkpoint(free: list[Checkpoint]) -> Plan:
    """`all`: each checkpoint, oldest first."""
    return Plan(candidates=free)


def latest(free: list[Checkpoint]) -> Plan:
    """`latest`: when behind, the newest; the older ones are skipped."""
    reason = "eval.policy=latest: a newer checkpoint waited"
    return Plan([(c, reason) for c in free[:-1]], free[-1:])


SCHEDULES: dict[str, Schedule] = {"all": every_checkpoint, "latest": latest}
