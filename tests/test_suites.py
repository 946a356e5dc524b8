"""Evaluation suites (config `suites:`, shared/checkpoints/suites.py): which steps each selects, where each
keeps its results, and which suites train.py's retention honours."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from shared import config as cfg
from shared.checkpoints.retention import EvaluatorProgress, RetentionPolicy
from shared.checkpoints.schedule import EveryCheckpoint, Latest
from shared.checkpoints.store import Checkpoint, list_checkpoints
from shared.checkpoints.suites import SUITE_RECORD, find_suite, record_suite, suites
from shared.protocol import numbers
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_results
from shared.protocol.results import EvalResult, SplitResult
from shared.tasks.loading import load_config, suite_config
from tests.conftest import SHORT_RUN, Proc, kill_trainer_at_some_moment, scalar_points, wait_while_progressing


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


def ledger_steps(train_dir: TrainDir) -> dict[int, str]:
    """step -> status of every record in the suite's ledger (a step recorded twice fails the test)."""
    records = read_results(train_dir.results) if train_dir.results.exists() else []
    steps = [r.step for r in records]
    assert len(steps) == len(set(steps)), f"{train_dir.results} records a step twice: {steps}"
    return {r.step: r.status for r in records}


def assert_settled(train_dir: TrainDir) -> None:
    """Nothing left in the suite's hands: no claim, no outcome waiting."""
    assert not os.listdir(train_dir.claims) and not os.listdir(train_dir.pending), train_dir.eval_run


@pytest.mark.slow
def test_two_suites_beside_a_trainer_record_each_selected_step_once_through_kills(
    start: Callable[..., Proc], tmp_path: Path
) -> None:
    """The default suite and a downstream one (its own task: other data, other metrics; two evaluators) on every
    other checkpoint, beside train.py; the trainer and a downstream evaluator are each SIGKILLed once and started
    again. Each suite records each step it selects once, in its own ledger and TensorBoard run, at the
    checkpoints' steps."""
    train_dir = TrainDir(tmp_path / "run")
    args = ["--train-dir", str(train_dir.root)]
    downstream = ["--set", "suites.down.every_steps=80", "--set", "suites.down.task=tests.suite_task:FlippedDigits"]
    trainer = start("train.py", *args, *SHORT_RUN, *downstream)
    default = start("eval.py", *args)
    down, other = (start("eval.py", *args, "--suite", "down") for _ in range(2))  # two evaluators of one suite
    kill_trainer_at_some_moment(trainer, train_dir, random.Random(23))
    trainer = start("train.py", *args)  # resumes from config.yaml, its suites included
    down_dir = train_dir.for_suite("down")
    wait_while_progressing(lambda: bool(ledger_steps(down_dir)) or down.popen.poll() is not None, down, "a record")
    down.signal(signal.SIGKILL)
    down.wait()
    down = start("eval.py", *args, "--suite", "down")
    for proc in (trainer, default, down, other):
        assert proc.wait_while_logging() == 0, proc.output()
    assert ledger_steps(train_dir) == dict.fromkeys([40, 80, 120, 160, 200], "ok")
    assert ledger_steps(down_dir) == {80: "ok", 160: "ok"}
    assert [step for step, _ in scalar_points(train_dir.eval_run, "accuracy")] == [40, 80, 120, 160, 200]
    assert [step for step, _ in scalar_points(down_dir.eval_run, "error")] == [80, 160]
    assert not scalar_points(down_dir.eval_run, "accuracy")  # the suite's own task's metrics only
    for suite in (train_dir, down_dir):
        assert_settled(suite)


@pytest.mark.slow
def test_a_lagging_suite_keeps_its_checkpoints_and_one_added_after_training_backfills(
    start: Callable[..., Proc], tmp_path: Path
) -> None:
    """A suite added by eval.py's --set (config.yaml never names it) joins, then is SIGSTOPped: train.py
    (max_to_keep=1) keeps the checkpoints its schedule selects and deletes the others. Once training has
    finished it goes on and evaluates them, and a suite started only then evaluates every retained checkpoint
    its schedule selects, in step order, its points at those steps; those retired before any evaluator came
    are recorded as skipped."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    overrides = [item for item in SHORT_RUN[3::2]] + ["checkpoint.max_to_keep=1"]
    cfg.save(load_config("configs/digits.yaml", overrides), train_dir.config)  # a train_dir before train.py starts
    args = ["--train-dir", str(train_dir.root)]
    lagging = start("eval.py", *args, "--suite", "lag", "--set", "suites.lag.every_steps=80")
    record = train_dir.for_suite("lag").eval_run / SUITE_RECORD
    wait_while_progressing(lambda: record.exists() or lagging.popen.poll() is not None, lagging, "the suite to join")
    lagging.signal(signal.SIGSTOP)
    trainer = start("train.py", *args)
    assert trainer.wait_while_logging() == 0, trainer.output()
    assert sorted(c.step for c in list_checkpoints(train_dir.checkpoints)) == [80, 160, 200]
    lagging.signal(signal.SIGCONT)
    assert lagging.wait_while_logging() == 0, lagging.output()
    assert ledger_steps(train_dir.for_suite("lag")) == {80: "ok", 160: "ok"}

    late = start("eval.py", *args, "--suite", "late", "--set", "suites.late.every_steps=40")
    assert late.wait_while_logging() == 0, late.output()
    late_dir = train_dir.for_suite("late")
    assert ledger_steps(late_dir) == {40: "skipped", 80: "ok", 120: "skipped", 160: "ok", 200: "ok"}
    assert [step for step, _ in scalar_points(late_dir.eval_run, "accuracy")] == [80, 160, 200]
    assert_settled(late_dir)


def test_retention_keeps_what_a_selecting_suite_lacks_up_to_its_own_limit() -> None:
    """The default suite has every step; suite `down` (every 20th) none, and keeps one unevaluated checkpoint: its
    oldest. Its next one goes, noted as unrecorded; a suite no daemon joined (no ledger) keeps nothing."""
    policy = RetentionPolicy(max_to_keep=1, max_unevaluated=20)
    down = EvaluatorProgress(-1, {}, EveryCheckpoint(20).selects, "down", limit=1)
    absent = EvaluatorProgress(None, {}, EveryCheckpoint(10).selects, "absent", limit=20)
    assert policy.to_delete([10, 20, 30, 40, 50], 50, suites=[down, absent]) == ([10, 30, 40], [40])
    assert "suite down recorded it (suites.down.max_unevaluated=1" in policy.why_unrecorded(True, down)


@pytest.mark.slow
def test_the_feedback_policies_act_on_the_suite_they_name(start: Callable[..., Proc], tmp_path: Path) -> None:
    """train.feedback_suite=down: early stopping reads eval-down/'s ledger (two evaluations, the second no better:
    patience 1 is spent) and stops training at the first log step; the default suite has no ledger at all."""
    train_dir = TrainDir(tmp_path / "run")
    down = train_dir.for_suite("down")
    down.eval_run.mkdir(parents=True)
    records = [EvalResult(s, f"checkpoints/ckpt-{s:09d}.pt", "ok", splits={"val": SplitResult({"accuracy": a})})
               for s, a in ((1, 0.5), (2, 0.4))]  # fmt: skip
    down.results.write_text("".join(numbers.dumps(r.to_record()) + "\n" for r in records))
    policy = ["--set", "train.feedback_suite=down", "--set", "train.early_stop.patience=1", "--set", "suites.down={}"]
    trainer = start("train.py", "--train-dir", str(train_dir.root), *SHORT_RUN, *policy)
    assert trainer.wait_while_logging() == 0, trainer.output()
    finished = json.loads(train_dir.finished.read_text())
    assert (finished["reason"], finished["step"]) == ("early_stop", 10), trainer.output()
    assert not train_dir.results.exists()
