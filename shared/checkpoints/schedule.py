"""Which checkpoints an evaluation suite takes, and in what order: its schedule.

A schedule is one object with two questions. `selects(step)`: is this checkpoint the suite's at all
(`every_steps`, `start_step`)? The suite's evaluators look only at those, and train.py's retention keeps a
checkpoint for a suite only if it selects it. `plan(free)`: of the free selected checkpoints (listed,
unrecorded, no outcome waiting, no live claim), oldest first, which to record as skipped (each with the
reason its ledger line gives) and which to try to claim, in order: the evaluator evaluates the first it claims.

It lives with the checkpoints, below both sides, because train.py asks it too. A new schedule is one class
here and its name in POLICIES (EvalConfig.policy and SuiteConfig.policy list the names a config may give).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from shared.checkpoints.store import Checkpoint


@dataclass(frozen=True)
class Plan:
    skip: list[tuple[Checkpoint, str]] = field(default_factory=list)  # (checkpoint, why), recorded as skipped
    candidates: list[Checkpoint] = field(default_factory=list)  # to claim in this order; the first claimed is evaluated


class Schedule(Protocol):
    def selects(self, step: int) -> bool:
        """Whether the checkpoint of `step` is this suite's to evaluate (or to record as skipped)."""
        ...

    def plan(self, free: list[Checkpoint]) -> Plan:
        """What to do with the free selected checkpoints, oldest first."""
        ...


@dataclass(frozen=True)
class EveryCheckpoint:
    """`all`: each selected checkpoint, oldest first. Selected: a multiple of `every_steps`, from `start_step` on."""

    every_steps: int = 1
    start_step: int = 0
    key: str = "eval.policy"  # the config key that chose this policy, for the reasons it records

    def selects(self, step: int) -> bool:
        return step >= self.start_step and step % self.every_steps == 0

    def plan(self, free: list[Checkpoint]) -> Plan:
        return Plan(candidates=free)


@dataclass(frozen=True)
class Latest(EveryCheckpoint):
    """`latest`: when behind, the newest selected one; the older ones are skipped."""

    def plan(self, free: list[Checkpoint]) -> Plan:
        reason = f"{self.key}=latest: a newer checkpoint waited"
        return Plan([(c, reason) for c in free[:-1]], free[-1:])


POLICIES: dict[str, type[EveryCheckpoint]] = {"all": EveryCheckpoint, "latest": Latest}
