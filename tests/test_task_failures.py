"""Task code that fails is isolated: a task raising while the daemon evaluates one checkpoint fails that
checkpoint only, and a classifier whose outputs do not fit its class names, or a task whose model returns no
loss and that defines none, is refused at start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shared.protocol.layout import TrainDir, weights_name
from shared.protocol.ledger import read_records
from tests.odd_tasks import BOOM

pytestmark = pytest.mark.slow

BLOBS = ["--set", "data.examples=120", "--set", "train.lr=0.01", "--set", "log.every_steps=10"]


def blobs_config(tmp_path: Path, task: str) -> str:
    path = tmp_path / f"{task}.yaml"
    path.write_text(
        f"task: tests.odd_tasks:{task}\nmodel: {{hidden: 8}}\ntrain: {{steps: 60}}\ncheckpoint: {{every_steps: 20}}\n"
    )
    return str(path)


def test_a_task_that_raises_on_one_checkpoint_fails_only_that_one(tmp_path: Path, start) -> None:
    train_dir = TrainDir(tmp_path / "run")
    trainer = start(
        "train.py", "--train-dir", str(train_dir.root), "--config", blobs_config(tmp_path, "FailingBlobsTask"), *BLOBS
    )
    assert trainer.wait() == 0, trainer.output()
    for path in (train_dir.checkpoint(40), train_dir.checkpoints / weights_name(40)):  # the task raises on these
        state = torch.load(path, weights_only=True)
        state["model"]["0.bias"][0] = BOOM
        temp = path.with_name(f".{path.name}.tmp")
        torch.save(state, temp)
        os.replace(temp, path)

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
