"""shared.checkpoints.retention: each rule alone, then the policy that composes them (tests/test_checkpoints.py)."""

from __future__ import annotations

from shared.checkpoints.retention import EvaluatorProgress, KeepEveryNSteps, KeepLatest, KeepUnevaluated

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
