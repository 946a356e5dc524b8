"""shared.training.policies, pure: evaluation results in, verdicts out, with no files or processes."""

from __future__ import annotations

import math

import pytest

from shared import config as cfg
from shared.protocol.results import EvalResult, SplitResult
from shared.training.policies import EarlyStop, Plateau, Policies, Tracker


def result(step: int, split: str = "val", **metrics: float) -> EvalResult:
    return EvalResult(step, "f", "ok", splits={split: SplitResult(metrics)})


def test_tracker_follows_the_metric_direction() -> None:
    loss, accuracy = Tracker(higher_is_better=False, min_delta=0.01), Tracker(higher_is_better=True, min_delta=0.0)
    assert [loss.improved(v) for v in (0.5, 0.495, 0.4, math.nan)] == [True, False, True, False]
    assert [accuracy.improved(v) for v in (0.5, 0.5, 0.6)] == [True, False, True]
    assert (loss.wait, accuracy.wait) == (1, 0)


def test_tracker_state_keeps_the_format_checkpoints_hold() -> None:
    """`best` is stored signed (larger is better), as checkpoints written before held it."""
    loss = Tracker(higher_is_better=False, min_delta=0.0)
    loss.improved(0.25)
    assert loss.state_dict() == {"best": -0.25, "wait": 0}
    fresh = Tracker(higher_is_better=False, min_delta=0.0)
    assert fresh.state_dict() == {"best": -math.inf, "wait": 0}
    fresh.load_state_dict({"best": -0.25, "wait": 2})
    assert (fresh.best, fresh.wait) == (0.25, 2)


def test_plateau_cuts_after_patience_then_cools_down_and_stops_at_the_floor() -> None:
    options = cfg.PlateauConfig(metric="loss", patience=2, factor=0.5, cooldown=1, min_delta=0.0, min_lr=0.25)
    plateau = Plateau(options, base_lr=1.0)
    multiplier, cuts = 1.0, []
    for value in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        multiplier, why = plateau.decide(value, multiplier)
        cuts.append(multiplier)
        assert bool(why) == (len(cuts) > 1 and cuts[-1] != cuts[-2])
    assert cuts == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]


def test_early_stop_says_why_after_patience_evaluations_without_improvement() -> None:
    stop = EarlyStop(cfg.EarlyStopConfig(metric="accuracy", mode="max", patience=2))
    assert [stop.decide(v) for v in (0.5, 0.6, 0.6)] == ["", "", ""]
    assert stop.decide(0.55) == "early_stop: val accuracy did not improve for 2 evaluations"


def test_policies_read_their_split_and_metric_from_a_result() -> None:
    options = cfg.TrainConfig(
        on_plateau=cfg.PlateauConfig(metric="loss", patience=1, split="train"),
        early_stop=cfg.EarlyStopConfig(metric="accuracy"),
    )
    policies = Policies(options)
    assert list(policies.enabled) == ["on_plateau"], "patience 0 turns a policy off"
    splits = {"val": SplitResult({"loss": 0.9}), "train": SplitResult({"loss": 0.2})}
    two_splits = EvalResult(5, "f", "ok", splits=splits)
    assert policies.values(two_splits) == {"on_plateau": 0.2}
    assert policies.values(result(6, loss=0.1)) == {"on_plateau": None}, "no train split: nothing to read"


def test_policies_decide_a_cut_and_a_stop_from_values_alone() -> None:
    options = cfg.TrainConfig(
        lr=0.1,
        on_plateau=cfg.PlateauConfig(metric="loss", patience=1),
        early_stop=cfg.EarlyStopConfig(metric="loss", patience=2),
    )
    policies = Policies(options)
    verdicts = [policies.decide({"on_plateau": v, "early_stop": v}, 1.0) for v in (0.5, 0.6)]
    assert [(v.action, v.multiplier) for v in verdicts] == [("none", 1.0), ("reduce_lr", pytest.approx(0.1))]
    verdict = policies.decide({"on_plateau": 0.7, "early_stop": 0.7}, verdicts[-1].multiplier)
    assert verdict.action == "early_stop" and "early_stop: val loss did not improve for 2" in verdict.reason
    skipped = policies.decide({"on_plateau": None, "early_stop": None}, 0.1)
    assert (skipped.action, skipped.multiplier, skipped.reason) == ("none", 0.1, "")


def test_policies_state_round_trips_and_a_new_policy_starts_fresh() -> None:
    options = cfg.TrainConfig(on_plateau=cfg.PlateauConfig(metric="loss", patience=3))
    policies = Policies(options)
    policies.decide({"on_plateau": 0.4}, 1.0)
    state = policies.state_dict()
    assert state == {"on_plateau": {"best": -0.4, "wait": 0, "cooldown": 0}}
    stop = cfg.EarlyStopConfig(metric="loss", patience=1)
    both = Policies(cfg.TrainConfig(on_plateau=cfg.PlateauConfig(metric="loss", patience=3), early_stop=stop))
    both.load_state_dict(state)
    assert both.plateau.tracker.best == 0.4 and both.early_stop.tracker.best == math.inf


def test_nan_evaluations_of_an_improving_run_cut_no_lr_and_stop_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Before, each NaN counted as an evaluation without improvement: two of them cut the LR and stopped a run
    whose loss was falling. Now a policy skips them (warned once per evaluation), as a missing metric."""
    options = cfg.TrainConfig(
        lr=0.1,
        on_plateau=cfg.PlateauConfig(metric="loss", patience=1),
        early_stop=cfg.EarlyStopConfig(metric="loss", patience=2),
    )
    policies = Policies(options)
    multiplier, actions = 1.0, []
    for step, loss in enumerate((0.9, math.nan, math.inf, math.nan, 0.8, 0.7), 1):
        values = policies.values(result(step, loss=loss))
        verdict = policies.decide(values, multiplier)
        multiplier = verdict.multiplier
        actions.append(verdict.action)
    assert actions == ["none"] * 6 and multiplier == 1.0
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warned) == 3 * 2 and "evaluation of step 2 has a non-finite val loss (nan)" in warned[0]
    assert policies.decide({"on_plateau": math.nan, "early_stop": math.nan}, 1.0).action == "none", "a replayed NaN"
