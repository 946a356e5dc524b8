"""shared.checkpoints.retention: each rule alone, then the policy that composes them (tests/test_checkpoints.py)."""

from __future__ import annotations

from shared.checkpoints.retention import (
    EvaluatorProgress,
    KeepBest,
    KeepEveryNSteps,
    KeepLatest,
    KeepUnevaluated,
    RetentionPolicy,
)
from shared.config import CheckpointConfig
from shared.protocol.results import EvalResult, SplitResult

STEPS = [100, 200, 300, 400, 500, 600, 700]
NO_LEDGER, NOTHING_YET = EvaluatorProgress(None), EvaluatorProgress(-1)


def test_keep_latest() -> None:
    assert KeepLatest(2).keep(STEPS, NO_LEDGER, frozenset()) == {600, 700}
    assert KeepLatest(20).keep(STEPS, NO_LEDGER, frozenset()) == set(STEPS)


def test_keep_every_n_steps() -> None:
    assert KeepEveryNSteps(300).keep(STEPS, NO_LEDGER, frozenset()) == {300, 600}
    assert KeepEveryNSteps(0).keep(STEPS, NO_LEDGER, frozenset()) == set(), "0 keeps none"


def test_keep_unevaluated_protects_the_oldest_not_yet_evaluated() -> None:
    rule = KeepUnevaluated(2)
    assert rule.keep(STEPS, EvaluatorProgress(300), frozenset()) == {400, 500}
    assert rule.keep(STEPS, NOTHING_YET, frozenset()) == {100, 200}
    assert rule.keep(STEPS, NO_LEDGER, frozenset()) == set(), "no evaluator keeps a ledger: nobody waits for them"
    assert rule.keep(STEPS, EvaluatorProgress(700), frozenset()) == set()


def test_keep_unevaluated_spends_its_allowance_on_steps_nothing_else_keeps() -> None:
    assert KeepUnevaluated(2).keep(STEPS, EvaluatorProgress(300), frozenset({400})) == {500, 600}


def test_evaluator_progress_names_the_unevaluated_steps() -> None:
    assert EvaluatorProgress(450).unevaluated(STEPS) == [500, 600, 700]
    assert NO_LEDGER.unevaluated(STEPS) == []


def _ok(step: int, loss: float) -> EvalResult:
    return EvalResult(step, "f", "ok", splits={"val": SplitResult({"loss": loss})})


def test_keep_best_ranks_as_best_export_does() -> None:
    """The n lowest losses among the committed steps; an equal value goes to the earlier step."""
    results = {100: _ok(100, 0.5), 200: _ok(200, 0.2), 300: _ok(300, 0.2), 400: _ok(400, 0.9), 800: _ok(800, 0.0)}
    progress = EvaluatorProgress(800, results)
    assert KeepBest(2, "loss", higher_is_better=False).keep(STEPS, progress, frozenset()) == {200, 300}
    assert KeepBest(1, "loss", higher_is_better=False).keep(STEPS, progress, frozenset()) == {200}
    assert KeepBest(1, "loss", higher_is_better=True).keep(STEPS, progress, frozenset()) == {400}
    assert KeepBest(1, "accuracy", higher_is_better=True).keep(STEPS, progress, frozenset()) == set()


def test_the_policy_composes_the_rules_in_order() -> None:
    options = CheckpointConfig(max_to_keep=1, keep_every_n_steps=300, max_unevaluated=1, keep_best=1)
    policy = RetentionPolicy.from_options(options, best_metric="loss")
    names = [type(rule).__name__ for rule in policy.rules]
    assert names == ["KeepLatest", "KeepEveryNSteps", "KeepBest", "KeepUnevaluated"]
    results = {s: _ok(s, 1 / s) for s in (100, 200, 400)}
    # Kept: 700 (latest), 300 and 600 (multiples), 400 (best), 500 (the one unevaluated nothing else keeps).
    assert policy.to_delete(STEPS, 400, results) == ([100, 200], [])
    assert RetentionPolicy(1, 300, 0, policy.best).to_delete(STEPS, 400, results) == ([100, 200, 500], [500])
    assert RetentionPolicy.from_options(options).best is None, "no metric to rank by: no KeepBest"
