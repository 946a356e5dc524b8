"""Evaluation suites (config `suites:`, shared/checkpoints/suites.py): which steps each selects, where each
keeps its results, and which suites train.py's retention honours."""

from __future__ import annotations

from pathlib import Path

from shared.checkpoints.schedule import EveryCheckpoint, Latest
from shared.checkpoints.store import Checkpoint
from shared.checkpoints.suites import SUITE_RECORD, find_suite, record_suite, suites
from shared.protocol.layout import TrainDir
from shared.tasks.loading import load_config, suite_config


def test_a_schedule_selects_multiples_from_its_start_and_latest_skips_the_older() -> None:
    schedule = Latest(every_steps=20, start_step=40, key="suites.x.policy")
    assert [s for s in range(0, 121, 10) if schedule.selects(s)] == [40, 60, 80, 100, 120]
    free = [Checkpoint(s, Path(f"ckpt-{s}")) for s in (40, 60, 80)]
    plan = schedule.plan(free)
    assert [c.step for c, _ in plan.skip] == [40, 60] and [c.step for c in plan.candidates] == [80]
    assert plan.skip[0][1] == "suites.x.policy=latest: a newer checkpoint waited"
    assert EveryCheckpoint().plan(free).candidates == free and EveryCheckpoint().selects(7)


def test_each_suite_has_its_own_places_and_the_default_keeps_eval(tmp_path: Path) -> None:
    """The default suite's paths are today's; a named one's are eval-NAME/ and best-NAME; a suite known only from
    its daemon's record on disk (added by eval.py's --set after training) is listed with the schedule it runs."""
    downstream = "suites.down.task=tests.suite_task:FlippedDigits"
    overrides = ["suites.down.every_steps=5", "suites.down.max_examples=10", downstream]
    config = load_config("configs/digits.yaml", overrides)
    train_dir = TrainDir(tmp_path)
    listed = suites(train_dir, config)
    assert list(listed) == ["eval", "down"]
    default, down = listed["eval"], listed["down"]
    assert (default.places.results, default.places.claims, default.places.best) == (
        tmp_path / "eval/results.jsonl",
        tmp_path / "eval/claims",
        tmp_path / "best",
    )
    assert (down.places.results, down.places.pending, down.places.split_run("test"), down.places.best) == (
        tmp_path / "eval-down/results.jsonl",
        tmp_path / "eval-down/pending",
        tmp_path / "eval-down_test",
        tmp_path / "best-down",
    )
    assert [s for s in range(12) if down.schedule.selects(s)] == [0, 5, 10]
    assert down.max_unevaluated == config.checkpoint.max_unevaluated
    ran = suite_config(config, "down")  # the config its evaluator runs: the suite's task and options
    assert (ran.task, ran.eval.max_examples, ran.eval.best_metric) == ("tests.suite_task:FlippedDigits", 10, "error")

    later = find_suite(train_dir, load_config("configs/digits.yaml", ["suites.late.every_steps=3"]), "late")
    later.places.eval_run.mkdir()
    record_suite(later)
    assert (later.places.eval_run / SUITE_RECORD).is_file()
    known = suites(train_dir, config)  # a config that never heard of `late`
    assert list(known) == ["eval", "down", "late"] and known["late"].schedule.selects(3)
    assert not known["late"].schedule.selects(4)
