"""Retention never takes a checkpoint from an evaluator that still needs it, within checkpoint.max_unevaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import eval as eval_script
from shared import config as cfg
from shared.checkpoints.store import Checkpoint, list_checkpoints
from shared.evaluation import actions
from shared.evaluation.coordination import Coordinator, join_as_evaluator
from shared.evaluation.evaluator import Evaluator
from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from shared.protocol.outcomes import outcome_steps, write_outcome
from shared.protocol.results import EvalResult
from shared.runtime import threads
from shared.tasks.digits import DigitsData, DigitsModel, DigitsTask
from tests.conftest import SHORT_RUN, scalar_points, wait_for_watching

pytestmark = pytest.mark.slow


def test_a_slow_evaluator_gets_every_checkpoint(tmp_path: Path, start) -> None:
    """max_to_keep=2, a checkpoint every 2 steps and an evaluator slowed by batch size 1 (on 60 examples, so
    the test itself stays quick): it falls far behind, yet evaluates every checkpoint."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    # Every core too, not the evaluator's share it would take beside the trainer: slow on purpose.
    slow = ["--set", "eval.batch_size=1", "--set", "eval.max_examples=60", "--threads", str(threads.host_cores())]
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), *slow)
    wait_for_watching(evaluator)
    run = [
        *SHORT_RUN,
        "--set", "train.steps=60",
        "--set", "checkpoint.every_steps=2",
        "--set", "checkpoint.max_to_keep=2",
        "--set", "checkpoint.max_unevaluated=1000",
    ]  # fmt: skip
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    assert trainer.wait() == 0, trainer.output()
    behind = len(list_checkpoints(train_dir.checkpoints))
    assert evaluator.wait() == 0, evaluator.output()
    assert behind > 2, "the evaluator was never behind: this test proves nothing"
    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == list(range(2, 61, 2))
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"][:3]


def test_the_cap_deletes_unevaluated_checkpoints_and_says_so(tmp_path: Path, start) -> None:
    """With a ledger but no progress in it, train.py keeps the 3 oldest unevaluated plus the newest 2."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.eval_run.mkdir(parents=True)
    train_dir.results.touch()  # an evaluator has started but recorded nothing yet
    run = [
        *SHORT_RUN,
        "--set", "train.steps=100",
        "--set", "checkpoint.every_steps=10",
        "--set", "checkpoint.max_to_keep=2",
        "--set", "checkpoint.max_unevaluated=3",
    ]  # fmt: skip
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    assert trainer.wait() == 0, trainer.output()
    assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [10, 20, 30, 90, 100]
    assert "checkpoint.max_unevaluated=3 reached: deleting steps [40]" in trainer.output()

    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()
    records = read_records(train_dir.results)
    assert [(r["step"], r["status"]) for r in records] == [
        (s, "skipped" if 40 <= s <= 80 else "ok") for s in range(10, 101, 10)
    ], "a step retired by the cap went unrecorded"
    assert all("checkpoint.max_unevaluated=3 reached" in r["reason"] for r in records if r["status"] == "skipped")


def test_checkpoints_retired_before_any_evaluator_joined_are_recorded_as_skipped(tmp_path: Path, start) -> None:
    """max_to_keep=1 and a checkpoint every 5 steps, two evaluators started once training ended. Before, the
    retired steps got no record at all: train.py now notes each before it deletes it, and the recorder turns
    the notes into ledger lines, one per step however many evaluators there are."""
    train_dir = TrainDir(tmp_path / "run")
    run = [
        *SHORT_RUN,
        "--set",
        "train.steps=30",
        "--set",
        "checkpoint.every_steps=5",
        "--set",
        "checkpoint.max_to_keep=1",
    ]
    trainer = start("train.py", "--train-dir", str(train_dir.root), *run)
    assert trainer.wait_while_logging() == 0, trainer.output()
    assert [c.step for c in list_checkpoints(train_dir.checkpoints)] == [30]
    evaluators = [start("eval.py", "--train-dir", str(train_dir.root)) for _ in range(2)]
    for evaluator in evaluators:
        assert evaluator.wait_while_logging() == 0, evaluator.output()
    records = read_records(train_dir.results)
    assert [(r["step"], r["status"]) for r in records] == [(s, "skipped") for s in range(5, 30, 5)] + [(30, "ok")]
    reason = "retired by train.py before any evaluator joined (checkpoint.max_to_keep=1): keep more"
    assert all(reason in r["reason"] for r in records[:-1]), records[0]
    said = "".join(e.output() for e in evaluators)
    assert said.count("ckpt-000000005.pt: skipped, retired by train.py") == 1, said

    again = start("eval.py", "--train-dir", str(train_dir.root))
    assert again.wait_while_logging() == 0, again.output()
    assert read_records(train_dir.results) == records, "a restart recorded a step again"


def test_policy_latest_jumps_to_the_newest_and_records_the_rest_as_skipped(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    run = [
        *SHORT_RUN,
        "--set",
        "train.steps=60",
        "--set",
        "checkpoint.every_steps=10",
        "--set",
        "checkpoint.max_to_keep=9",
    ]
    assert start("train.py", "--train-dir", str(train_dir.root), *run).wait() == 0
    evaluator = start("eval.py", "--train-dir", str(train_dir.root), "--set", "eval.policy=latest")
    assert evaluator.wait() == 0, evaluator.output()
    records = read_records(train_dir.results)
    assert [(r["step"], r["status"]) for r in records] == [(s, "skipped") for s in range(10, 60, 10)] + [(60, "ok")]
    assert all("eval.policy=latest" in r["reason"] for r in records if r["status"] == "skipped")
    assert [step for step, _ in scalar_points(train_dir.eval_run, "accuracy")] == [60]


def test_a_checkpoint_deleted_between_detection_and_load_is_recorded_as_skipped(tmp_path: Path) -> None:
    train_dir = TrainDir(tmp_path / "run")
    train_dir.checkpoints.mkdir(parents=True)
    config = cfg.Config(model=DigitsModel(), data=DigitsData())
    cfg.save(config, train_dir.config)
    join_as_evaluator(train_dir)
    evaluator = Evaluator(DigitsTask(DigitsModel(), DigitsData(), 0), torch.device("cpu"), 512)
    vanished = Checkpoint(100, train_dir.checkpoint(100))  # listed, then deleted before the load
    outcome = eval_script.evaluate_checkpoint(vanished, evaluator, train_dir)
    assert outcome.status == "skipped" and "deleted" in outcome.reason and not outcome.splits
    write_outcome(train_dir.pending, outcome)
    with Coordinator(train_dir, config, eval_script.write_summaries, {"val": train_dir.eval_run}) as shared:
        assert shared.record_ready() == 1
    assert read_records(train_dir.results)[0]["status"] == "skipped"


def test_a_failed_evaluation_leaves_its_outcome_but_never_exports_best(tmp_path: Path) -> None:
    """The actions after an evaluation: best/ only for a scored result, the outcome for every result."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    config = cfg.Config(model=DigitsModel(), data=DigitsData())
    join_as_evaluator(train_dir)
    evaluator = Evaluator(DigitsTask(DigitsModel(), DigitsData(), 0), torch.device("cpu"), 512)
    failed = EvalResult(10, "checkpoints/ckpt-000000010.pt", "failed", reason="unreadable")
    actions.run(eval_script.after_evaluation(train_dir, evaluator, config), failed)
    assert not train_dir.best.exists() and list(outcome_steps(train_dir.pending)) == [10]
