"""best/ (safetensors export) and several evaluation splits, with the real train.py and eval.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.evaluation.evaluator import Evaluator
from shared.evaluation.export import load_best, read_best
from shared.protocol.layout import BEST_VERSION_RE, TrainDir
from shared.protocol.ledger import read_records, read_results
from shared.protocol.results import best_of
from shared.tasks.loading import load_config
from tests.conftest import scalar_points, wait_for_watching

pytestmark = pytest.mark.slow

EVAL_TAGS = ("loss", "accuracy", "f1_macro", "precision_macro", "recall_macro")
# docs/tasks.md's custom task (an MLP, no batch-norm statistics): a learning rate too small to change any
# prediction leaves every checkpoint with the same accuracy.
FROZEN = """
task: tests.custom_task:BlobsTask
model: {hidden: 16}
data: {batch_size: 32, examples: 300}
train: {steps: 60, lr: 1.0e-9, max_eval_lag: 0}  # waits for each record, so retention deletes step 20
checkpoint: {every_steps: 20, max_to_keep: 1}
"""
TWO_SPLITS = ["--set", "eval.splits=[val,train]"]


def test_best_outlives_retention_and_two_splits_share_tags(tmp_path: Path, start) -> None:
    """Every checkpoint of a frozen run ties on accuracy, so the earliest, step 20, stays the best (ties go
    to the earlier step); max_to_keep=1 deletes its file once its record is in the ledger, and best/ still
    holds it."""
    train_dir = TrainDir(tmp_path / "run")
    train_dir.root.mkdir()
    root = str(train_dir.root)
    evaluator = start("eval.py", "--train-dir", root, *TWO_SPLITS, "--idle-timeout", "60")
    wait_for_watching(evaluator)
    (tmp_path / "frozen.yaml").write_text(FROZEN)
    trainer = start("train.py", "--train-dir", root, "--config", str(tmp_path / "frozen.yaml"))
    assert trainer.wait() == 0, trainer.output()
    assert evaluator.wait() == 0, evaluator.output()

    records = read_records(train_dir.results)
    assert [r["step"] for r in records] == [20, 40, 60] and all(r["status"] == "ok" for r in records), records
    expected = best_of(read_results(train_dir.results), "accuracy", higher_is_better=True).to_record()
    assert expected["step"] == 20, "an update changed a prediction: this run no longer tests what it says"
    assert not train_dir.checkpoint(expected["step"]).exists(), "retention kept the best's file: proves nothing"
    best = read_best(train_dir)
    assert (best["step"], best["metrics"], best["split_metrics"]) == (
        expected["step"],
        expected["metrics"],
        expected["split_metrics"],
    )
    assert sorted(p.name for p in train_dir.root.iterdir() if BEST_VERSION_RE.match(p.name)) == [
        f".best-{expected['step']:09d}"
    ], "an old or half-written best folder was left behind"

    # docs/evaluation.md's helper gives a model that scores exactly what the ledger recorded for that step.
    model = load_best(train_dir.root)
    scorer = Evaluator.from_config(load_config(train_dir.config), torch.device("cpu"))
    scorer.model.load_state_dict(model.state_dict())
    assert scorer.evaluate(best["step"]).metrics == expected["metrics"]

    adhoc = start("eval.py", "--train-dir", root, "--checkpoint", "best", "--json", *TWO_SPLITS)
    assert adhoc.wait() == 0, adhoc.output()
    (line,) = [line for line in adhoc.output().splitlines() if line.startswith("{")]
    printed = json.loads(line)
    assert (printed["step"], printed["split_metrics"]) == (expected["step"], expected["split_metrics"])
    assert printed["file"] == f"{train_dir.best}/", "best/ by its own name, not the hidden folder it points at"

    # Two runs, eval/ and eval_train/, with the same tags: one point per step each, the ledger's values.
    for split in ("val", "train"):
        for tag in EVAL_TAGS:
            points = scalar_points(train_dir.split_run(split), tag)
            assert [step for step, _ in points] == [20, 40, 60], (split, tag)
            for (step, value), record in zip(points, records, strict=True):
                assert value == pytest.approx(record["split_metrics"][split][tag], rel=1e-6), (split, tag, step)
    assert records[0]["split_metrics"]["val"] != records[0]["split_metrics"]["train"]
