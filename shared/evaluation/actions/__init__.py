"""What eval.py does with each result after an evaluation: a list of actions, run in order.

An action takes the result (`ok`, `failed` or `skipped`) and does one thing with it; a condition says
which results it is for, and `When(condition, action)` composes the two (export to best/ only what
was scored, say). eval.py composes the list (`after_evaluation`); the order matters where one action
relies on another (best/ is exported before the outcome is written, since once the outcome is recorded
train.py's retention may delete the checkpoint).

A new action is one module in this package with one callable taking an `EvalResult`, and one entry
in eval.py's list, wrapped in `When` if it is not for every result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared.protocol.results import EvalResult

Action = Callable[[EvalResult], None]
Condition = Callable[[EvalResult], bool]


@dataclass(frozen=True)
class When:
    """An action for the results that meet a condition only."""

    condition: Condition
    action: Action

    def __call__(self, result: EvalResult) -> None:
        if self.condition(result):
            self.action(result)


def scored(result: EvalResult) -> bool:
    """The checkpoint was evaluated and has metrics (not failed, not skipped)."""
    return result.status == "ok"


def run(actions: Iterable[Action], result: EvalResult) -> None:
    for action in actions:
        action(result)
