"""Task code that fails is isolated: a task raising while the daemon evaluates one checkpoint fails that
checkpoint only, and a classifier whose outputs do not fit its class names, or a task whose model returns no
loss and that defines none, is refused at start."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from shared.evaluation import export
from shared.protocol.layout import TrainDir, weights_name
from shared.protocol.ledger import read_records, read_results
from shared.protocol.results import EvalResult, SplitResult
from shared.tasks.loading import build_task, load_config
from tests.odd_tasks import BOOM

pytestmark = pytest.mark.slow

BLOBS = ["--set", "data.examples=120", "--set", "train.lr=0.01", "--set", "log.every_steps=10"]


def blobs_config(tmp_path: Path, task: str) -> str:
    path = tmp_path / f"{task}.yaml"
    path.write_text(
        f"task: tests.odd_tasks:{task}\nmodel: {{hidden: 8}}\ntrain: {{steps: 60}}\ncheckpoint: {{every_steps: 20}}\n"
    )
    return str(path)


def boom(train_dir: TrainDir, step: int) -> None:
    """Set the first bias of `step`'s checkpoint (and of its weights file) to BOOM."""
    for path in (train_dir.checkpoint(step), train_dir.checkpoints / weights_name(step)):
        state = torch.load(path, weights_only=True)
        state["model"]["0.bias"][0] = BOOM
        temp = path.with_name(f".{path.name}.tmp")
        torch.save(state, temp)
        os.replace(temp, path)


def test_a_task_that_raises_on_one_checkpoint_fails_only_that_one(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    trainer = start(
        "train.py", "--train-dir", str(train_dir.root), "--config", blobs_config(tmp_path, "FailingBlobsTask"), *BLOBS
    )
    assert trainer.wait() == 0, trainer.output()
    boom(train_dir, 40)  # the task raises on this one

    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()
    records = read_records(train_dir.results)
    assert [(r["step"], r["status"]) for r in records] == [(20, "ok"), (40, "failed"), (60, "ok")]
    assert records[1]["reason"] == "the task raised RuntimeError: the blob model cannot take these weights"
    output = evaluator.output()
    assert "step 40: the task failed while evaluating it: RuntimeError: the blob model" in output
    assert "Traceback" not in output  # the traceback is logged at debug level only
    assert not any(train_dir.claims.iterdir()) and not any(train_dir.pending.iterdir())

    again = start("eval.py", "--train-dir", str(train_dir.root))  # a restart does not retry (or crash on) step 40
    assert again.wait() == 0, again.output()
    assert read_records(train_dir.results) == records


@pytest.mark.parametrize(
    ("task", "named"),
    [
        pytest.param("NarrowBlobsTask", "outputs 3 values per example but class_names has 4 classes", id="width"),
        pytest.param("MislabelledBlobsTask", "a target is class 2, outside the 2 classes", id="target"),
        pytest.param("LosslessBlobsTask", "(Tensor) hold no loss; define loss(outputs, targets) in", id="no-loss"),
    ],
)
def test_a_task_whose_outputs_it_cannot_score_is_exit_2(tmp_path: Path, start, task: str, named: str) -> None:
    trainer = start("train.py", "--train-dir", str(tmp_path / "run"), "--config", blobs_config(tmp_path, task), *BLOBS)
    assert trainer.wait() == 2
    lines = trainer.output().strip().splitlines()
    assert named in lines[-1] and lines[-1].startswith("train.py: error: ") and "Traceback" not in trainer.output()
    assert not (tmp_path / "run" / "checkpoints").exists()


def strict_json(text: str) -> object:
    """JSON as the standard has it: a bare NaN or Infinity (which Python's json module accepts) fails."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_nan_first_evaluation_never_becomes_best_and_every_json_file_stays_valid(tmp_path: Path, start) -> None:
    """The first checkpoint's loss is a real NaN (the task's outputs on its weights): before, it became best/
    and stayed there for good (nothing compares better than NaN), and bare NaN went into the ledger."""
    train_dir = TrainDir(tmp_path / "run")
    config = blobs_config(tmp_path, "NaNBlobsTask")
    trainer = start(
        "train.py", "--train-dir", str(train_dir.root), "--config", config, *BLOBS, "--set", "eval.best_metric=loss"
    )
    assert trainer.wait() == 0, trainer.output()
    boom(train_dir, 20)

    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert evaluator.wait() == 0, evaluator.output()
    assert "step 20: its loss is nan, never the best; best/ stays as it is" in evaluator.output()
    lines = train_dir.results.read_text().splitlines()
    assert [strict_json(line)["metrics"]["loss"] == "NaN" for line in lines] == [True, False, False], lines
    results = {r.step: r for r in read_results(train_dir.results)}
    assert math.isnan(results[20].value("loss")) and results[20].status == "ok"
    best = strict_json((train_dir.best / "metrics.json").read_text())
    finite = {step: r.value("loss") for step, r in results.items() if step != 20}
    assert best["step"] == min(finite, key=finite.get) and best["value"] == finite[best["step"]], best

    shown = start("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", "best", "--json")
    assert shown.wait() == 0, shown.output()
    assert strict_json(shown.output().strip().splitlines()[-1])["step"] == best["step"]
    nan = start("eval.py", "--train-dir", str(train_dir.root), "--checkpoint", "20", "--json")
    assert nan.wait() == 0, nan.output()
    assert strict_json(nan.output().strip().splitlines()[-1])["metrics"]["loss"] == "NaN"


def test_a_nan_best_left_by_an_older_version_is_replaced_by_any_finite_result(tmp_path: Path) -> None:
    """best/metrics.json as the version before wrote it: a bare NaN, read as it is, and beaten by any number."""
    train_dir = TrainDir(tmp_path)
    config = load_config(blobs_config(tmp_path, "NaNBlobsTask"), ["eval.best_metric=loss"])
    old = train_dir.best_version(20)
    old.mkdir()
    (old / "metrics.json").write_text(
        '{"step": 20, "metric": "loss", "mode": "min", "value": NaN, "file": "checkpoints/ckpt-000000020.pt", '
        '"metrics": {"loss": NaN}, "split_metrics": {"val": {"loss": NaN}}, "wall_time": 0}\n'
    )
    train_dir.best.symlink_to(old.name)
    assert math.isnan(export.held_best(train_dir).value("loss"))
    task = build_task(config)
    candidate = EvalResult(40, "checkpoints/ckpt-000000040.pt", "ok", splits={"val": SplitResult({"loss": 5.0})})
    assert export.export_if_best(train_dir, task, task.build_model(), config, candidate) is not None
    assert export.read_best(train_dir)["step"] == 40 and not old.exists()
