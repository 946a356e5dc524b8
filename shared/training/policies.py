"""The feedback policies, pure: an evaluation result in, a verdict out; no files, no processes, no clock.

train.on_plateau (Keras' ReduceLROnPlateau) cuts the LR multiplier after `patience` evaluations without
improvement; train.early_stop (Keras' EarlyStopping) stops after `patience` of them. Each reads one
metric of one split, improving in that metric's direction (resolved once, when the config is validated with
its task). Their state goes into each checkpoint, so a resumed run decides as the uninterrupted one would.
The plumbing that feeds them (the ledger, decisions.jsonl, replay, torchrun) is shared.training.feedback.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from shared import config as cfg
from shared.protocol.numbers import finite
from shared.protocol.results import EvalResult, is_better

log = logging.getLogger(__name__)

Action = Literal["none", "reduce_lr", "early_stop"]


@dataclass
class Tracker:
    """Keras-style progress of one metric: the best value so far and evaluations since it improved."""

    higher_is_better: bool
    min_delta: float
    best: float = field(init=False)
    wait: int = 0

    def __post_init__(self) -> None:
        self.best = -math.inf if self.higher_is_better else math.inf

    def improved(self, value: float) -> bool:
        if is_better(value, self.best, self.higher_is_better, self.min_delta):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        """As checkpoints have always held it: `best` signed so that larger is better."""
        return {"best": self.best if self.higher_is_better else -self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"] if self.higher_is_better else -state["best"]
        self.wait = state["wait"]


def _tracker(options: cfg.PlateauConfig | cfg.EarlyStopConfig) -> Tracker:
    return Tracker(options.improves_upwards(options.metric), options.min_delta)


def _stalled(name: str, options: cfg.PlateauConfig | cfg.EarlyStopConfig) -> str:
    return f"{name}: {options.split} {options.metric} did not improve for {options.patience} evaluations"


class Plateau:
    """train.on_plateau: after `patience` evaluations without improvement, the LR multiplier is cut by
    `factor` (not below min_lr / train.lr), then `cooldown` evaluations pass uncounted."""

    def __init__(self, options: cfg.PlateauConfig, base_lr: float) -> None:
        self.options, self.tracker, self.cooldown = options, _tracker(options), 0
        self.floor = options.min_lr / base_lr

    def decide(self, value: float, multiplier: float) -> tuple[float, str]:
        """The new multiplier, and why it changed ("" when it did not)."""
        if self.cooldown:
            self.cooldown -= 1
            self.tracker.wait = 0
        improved = self.tracker.improved(value)
        if self.cooldown:
            self.tracker.wait = 0
        if improved or self.tracker.wait < self.options.patience or multiplier <= self.floor:
            return multiplier, ""
        self.cooldown, self.tracker.wait = self.options.cooldown, 0
        return max(multiplier * self.options.factor, self.floor), _stalled("on_plateau", self.options)

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "cooldown": self.cooldown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.cooldown = state["cooldown"]


class EarlyStop:
    """train.early_stop: stop after `patience` evaluations without improvement."""

    def __init__(self, options: cfg.EarlyStopConfig) -> None:
        self.options, self.tracker = options, _tracker(options)

    def decide(self, value: float) -> str:
        """Why to stop now, or "" to go on."""
        if self.tracker.improved(value) or self.tracker.wait < self.options.patience:
            return ""
        return _stalled("early_stop", self.options)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)


@dataclass(frozen=True)
class Verdict:
    """What the policies made of one evaluation: the values they read, and what to do."""

    values: dict[str, float | None]  # by policy name; None when the evaluation lacked the policy's metric
    action: Action
    multiplier: float  # the LR multiplier from now on
    reason: str  # why, when the action is not "none"


class Policies:
    """The enabled policies (patience > 0) by name: which values of a result they read, and their verdict."""

    def __init__(self, options: cfg.TrainConfig) -> None:
        plateau, stop = options.on_plateau, options.early_stop
        self.plateau = Plateau(plateau, options.lr) if plateau.patience else None
        self.early_stop = EarlyStop(stop) if stop.patience else None
        self.enabled: dict[str, Plateau | EarlyStop] = {
            name: policy for name, policy in (("on_plateau", self.plateau), ("early_stop", self.early_stop)) if policy
        }

    def values(self, result: EvalResult) -> dict[str, float | None]:
        """What each policy reads from an ok result; a missing metric, or a NaN or infinite one, is warned
        about and read as None: the policy skips that evaluation (neither an improvement nor a step towards
        a plateau, so a NaN evaluation of a run that was improving cuts no LR and stops nothing)."""
        values = {}
        for name, policy in self.enabled.items():
            value = result.value(policy.options.metric, policy.options.split)
            values[name] = value if finite(value) else None
            if values[name] is None:
                log.warning(
                    "evaluation of step %d has %s %s %s; the policy on it skips this evaluation",
                    result.step,
                    "no" if value is None else "a non-finite",
                    policy.options.split,
                    policy.options.metric if value is None else f"{policy.options.metric} ({value})",
                )
        return values

    def decide(self, values: dict[str, float | None], multiplier: float) -> Verdict:
        """Feed one evaluation's values (as `values` read them, or as a replayed decision logged them)."""
        action: Action = "none"
        reasons = []
        if self.plateau and finite(values.get("on_plateau")):
            cut, why = self.plateau.decide(values["on_plateau"], multiplier)
            if cut != multiplier:
                multiplier, action = cut, "reduce_lr"
                reasons.append(why)
        if self.early_stop and finite(values.get("early_stop")):
            why = self.early_stop.decide(values["early_stop"])
            if why:
                action = "early_stop"
                reasons.append(why)
        return Verdict(values, action, multiplier, "; ".join(reasons))

    def state_dict(self) -> dict[str, Any]:
        return {name: policy.state_dict() for name, policy in self.enabled.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, policy in self.enabled.items():
            if name in state:  # a policy switched on at this resume starts fresh
                policy.load_state_dict(state[name])
