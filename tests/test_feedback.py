"""Evaluation feedback across processes: plateau LR cuts, early stopping, and their replay on resume.

The runs use train.max_eval_lag=0, so train.py waits at each save until eval.py has evaluated it: the
evaluation of step 40k is then acted on at the next log step, 40k + 10. min_delta=100 on the loss makes
every evaluation after the first "no improvement", so the policies act at evaluations fixed by patience.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records, read_results
from shared.tasks.loading import load_config
from shared.training.optim import lr_multiplier
from tests.conftest import (
    ROOT,
    SHORT_RUN,
    Proc,
    process_starter,
    scalar_points,
    wait_for_watching,
    wait_while_progressing,
)
from tests.warm_cli import WarmCli

FEEDBACK_RUN = [
    *SHORT_RUN,
    "--set", "train.steps=400",  # never reached: early stopping ends the run at step 170
    "--set", "train.max_eval_lag=0",
    "--set", "train.on_plateau.patience=2",
    "--set", "train.on_plateau.min_delta=100",
    "--set", "train.early_stop.patience=3",
    "--set", "train.early_stop.min_delta=100",
]  # fmt: skip
NO_EVALUATION = "act on eval.py's evaluations only"  # train.py's warning when none comes
# Evaluations of steps 40, 80, 120, 160, each applied 10 steps later: the first sets the best accuracy (the
# policies watch eval.best_metric when they name no metric), the third is the second without improvement
# (on_plateau.patience=2), the fourth the third (early_stop.patience=3).
EXPECTED = [(40, 50, "none"), (80, 90, "none"), (120, 130, "reduce_lr"), (160, 170, "early_stop")]


def start_pair(start: Callable[..., Proc], train_dir: TrainDir) -> tuple[Proc, Proc]:
    """eval.py first, watching, so it opens its ledger as train.py writes config.yaml, before train.py's first
    save (max_eval_lag then waits for it). The folder exists first, so the daemon watches it at once."""
    train_dir.root.mkdir(exist_ok=True)
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    wait_for_watching(evaluator)
    return evaluator, start("train.py", "--train-dir", str(train_dir.root), *FEEDBACK_RUN)


def decided(train_dir: TrainDir) -> list[dict[str, Any]]:
    """decisions.jsonl without wall times: what must be the same in every run."""
    return [{k: v for k, v in d.items() if k != "wall_time"} for d in read_records(train_dir.decisions)]


def decision_texts(train_dir: TrainDir) -> list[int]:
    """Steps of the `decisions` text points TensorBoard keeps in the train run (the loader TensorBoard serves
    plugins with: unlike the legacy one, it applies purge_step to text too)."""
    accumulator = EventAccumulator(str(train_dir.train_run), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Tensors("decisions/text_summary")]


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, warm_scripts: WarmCli
) -> Iterator[tuple[TrainDir, Proc, Proc]]:
    """One run with both policies, shared by the tests below: (train_dir, eval.py, train.py), both exited."""
    folder = tmp_path_factory.mktemp("feedback")
    train_dir = TrainDir(folder / "run")
    with process_starter(folder, warm_scripts) as start:
        evaluator, trainer = start_pair(start, train_dir)
        assert trainer.wait() == 0, trainer.output()
        assert evaluator.wait() == 0, evaluator.output()
        yield train_dir, evaluator, trainer


@pytest.mark.slow
def test_plateau_cuts_the_lr_at_the_expected_evaluation(uninterrupted: tuple[TrainDir, Proc, Proc]) -> None:
    train_dir, _, _ = uninterrupted
    decisions = decided(train_dir)
    assert [(d["eval_step"], d["applied_step"], d["action"]) for d in decisions] == EXPECTED
    ledger = {r.step: r for r in read_results(train_dir.results)}
    assert [d["values"]["on_plateau"] for d in decisions] == [
        ledger[step].value("accuracy", "val") for step, _, _ in EXPECTED
    ]
    cut = decisions[2]
    assert cut["lr_multiplier"] == pytest.approx(0.1) and cut["new_lr"] == pytest.approx(0.1 * cut["old_lr"])

    # learning_rate at step t is the LR step t used: the schedule after t-1 steps, times 0.1 after the cut.
    config = load_config(ROOT / "configs/digits.yaml", [item for item in FEEDBACK_RUN if "=" in item])
    schedule = lr_multiplier(config.train)
    points = scalar_points(train_dir.train_run, "learning_rate")
    assert [step for step, _ in points] == list(range(10, 171, 10))
    for step, lr in points:
        expected = config.train.lr * schedule(step - 1) * (0.1 if step > 130 else 1.0)
        assert lr == pytest.approx(expected, rel=1e-6), step
    assert decision_texts(train_dir) == [50, 90, 130, 170]


@pytest.mark.slow
def test_early_stop_ends_training_and_the_evaluator_finishes(uninterrupted: tuple[TrainDir, Proc, Proc]) -> None:
    train_dir, evaluator, trainer = uninterrupted
    finished = json.loads(train_dir.finished.read_text())
    assert (finished["step"], finished["reason"]) == (170, "early_stop")
    assert (finished["decision"]["eval_step"], finished["decision"]["action"]) == (160, "early_stop")
    assert train_dir.checkpoint(170).exists()
    assert max(r["step"] for r in read_records(train_dir.results)) == 170  # the final checkpoint was evaluated
    assert "training finished and every checkpoint is evaluated" in evaluator.output()
    assert NO_EVALUATION not in trainer.output(), "an evaluator recorded every checkpoint: nothing to warn about"


@pytest.mark.slow
def test_a_killed_trainer_replays_the_same_decisions_at_the_same_steps(
    uninterrupted: tuple[TrainDir, Proc, Proc], start: Callable[..., Proc], tmp_path: Path
) -> None:
    """Kill train.py after it cut the LR at step 130 but before the checkpoint of step 160 was committed:
    the resumed run starts from step 120 and must apply that cut again at 130, then go on as before."""
    reference = uninterrupted[0]
    train_dir = TrainDir(tmp_path / "run")
    evaluator, trainer = start_pair(start, train_dir)
    at_120 = lambda: train_dir.checkpoint(120).exists() and 120 in evaluated(train_dir)  # noqa: E731
    wait_while_progressing(at_120, trainer, "step 120 evaluated")
    evaluator.signal(signal.SIGSTOP)  # no evaluation of 160 now: train.py waits there (max_eval_lag=0)
    wait_while_progressing(lambda: "waiting for eval.py: [160]" in trainer.output(), trainer, "train.py at step 160")
    assert [d["applied_step"] for d in decided(train_dir)] == [50, 90, 130]
    trainer.signal(signal.SIGKILL)
    trainer.wait()
    # What a kill during the write of step 160 leaves: its temp file, and step 120 as the newest checkpoint.
    train_dir.checkpoint(160).rename(train_dir.checkpoints / ".ckpt-000000160.pt.tmp")

    trainer = start("train.py", "--train-dir", str(train_dir.root), *FEEDBACK_RUN)
    evaluator.signal(signal.SIGCONT)  # it finds no step 160 until the resumed run saves it again
    assert trainer.wait() == 0, trainer.output()
    assert evaluator.wait() == 0, evaluator.output()
    assert "replaying 1 decision(s) logged after the checkpoint, at steps [130]" in trainer.output()
    assert decided(train_dir) == decided(reference)
    assert scalar_points(train_dir.train_run, "learning_rate") == scalar_points(reference.train_run, "learning_rate")
    assert decision_texts(train_dir) == [50, 90, 130, 170]  # the replayed one re-logged after the purge
    assert json.loads(train_dir.finished.read_text())["reason"] == "early_stop"


def evaluated(train_dir: TrainDir) -> set[int]:
    return {r["step"] for r in read_records(train_dir.results)}


def test_without_an_evaluator_the_policies_and_max_eval_lag_never_wait(
    start: Callable[..., Proc], tmp_path: Path
) -> None:
    """No ledger means no evaluator: nothing to wait for and nothing to decide; training completes, and says
    once, after WARN_AFTER_CHECKPOINTS checkpoints (at 40, 80, 120: the log step 130), that the policies need
    an eval.py beside it."""
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), *FEEDBACK_RUN, "--set", "train.steps=130")
    assert trainer.wait() == 0, trainer.output()
    assert json.loads(train_dir.finished.read_text())["reason"] == "completed"
    assert not train_dir.decisions.exists() and "waiting for eval.py" not in trainer.output()
    warnings = [line for line in trainer.output().splitlines() if NO_EVALUATION in line]
    assert len(warnings) == 1, trainer.output()
    for said in ("train.on_plateau and train.early_stop", "no eval.py has joined", f"--train-dir {train_dir.root}"):
        assert said in warnings[0], warnings[0]
