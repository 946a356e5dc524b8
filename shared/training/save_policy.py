"""When train.py saves: small policies, composed (every N steps, every T seconds, at the end of training).

A policy answers `due(step, end=...)`; `end` is true once the loop is over (the last step, a stop
request, an early stop). `saved()` tells it a save began (or the loop stood still, waiting for the
evaluator), so a clock starts again. A new policy is one class here with these two methods, and one
line in `from_options` (a config key for it in shared/config/schema.py's CheckpointConfig).
"""

from __future__ import annotations

import time
from typing import Protocol

from shared.config import CheckpointConfig
from shared.training.agreement import Agreement


class SavePolicy(Protocol):
    def due(self, step: int, *, end: bool = False) -> bool: ...

    def saved(self) -> None: ...


class EverySteps:
    """checkpoint.every_steps: at each multiple of `steps`."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def due(self, step: int, *, end: bool = False) -> bool:
        return not end and step % self.steps == 0

    def saved(self) -> None:
        pass


class EverySeconds:
    """checkpoint.every_secs: once `secs` have gone by since the last save, by this process's clock;
    under torchrun the ranks agree on it (at log steps), so all save at the same step."""

    def __init__(self, secs: float, agreement: Agreement) -> None:
        self.secs, self.agreement = secs, agreement
        self.since = time.monotonic()

    def due(self, step: int, *, end: bool = False) -> bool:
        return not end and self.agreement.any(step, time.monotonic() - self.since >= self.secs)

    def saved(self) -> None:
        self.since = time.monotonic()


class AtEnd:
    """At the end of training, finished or stopped: a resume then loses no step."""

    def due(self, step: int, *, end: bool = False) -> bool:
        return end

    def saved(self) -> None:
        pass


class AnyOf:
    """Due when any of its policies is; every one is asked, since some agree between ranks."""

    def __init__(self, *policies: SavePolicy) -> None:
        self.policies = policies

    def due(self, step: int, *, end: bool = False) -> bool:
        return any([policy.due(step, end=end) for policy in self.policies])

    def saved(self) -> None:
        for policy in self.policies:
            policy.saved()


def from_options(options: CheckpointConfig, agreement: Agreement) -> AnyOf:
    """checkpoint.every_steps and checkpoint.every_secs (0: not by that), and always at the end."""
    by_steps = [EverySteps(options.every_steps)] if options.every_steps else []
    by_time = [EverySeconds(options.every_secs, agreement)] if options.every_secs else []
    return AnyOf(*by_steps, *by_time, AtEnd())
