"""Exact resume for every kind of training data: a run SIGKILLed and resumed equals an uninterrupted one bit
for bit on the CPU, its losses and its final weights, with dropout in the model and whatever feeds the batches
(tests/resume_tasks.py); a stream, which has no position to resume from, is refused at start."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from shared.protocol.layout import TrainDir
from tests.conftest import kill_trainer_at_some_moment, scalar_points

pytestmark = [pytest.mark.slow, pytest.mark.long]

STEPS = 40
RUN = [
    "--set", f"train.steps={STEPS}",
    "--set", "train.warmup_steps=5",
    "--set", "train.lr=0.01",
    "--set", "checkpoint.every_steps=10",  # mid-epoch: 18 batches an epoch of blobs, 12 of lines
    "--set", "log.every_steps=1",
]  # fmt: skip


def config(tmp_path: Path, task: str, data: str) -> str:
    path = tmp_path / "task.yaml"
    path.write_text(f"task: tests.resume_tasks:{task}\nmodel: {{hidden: 16}}\ndata: {{batch_size: 32{data}}}\n")
    return str(path)


@pytest.mark.parametrize(
    ("task", "data"),
    [
        pytest.param("DropoutBlobsTask", "", id="TensorDataset"),
        pytest.param("DropoutLinesTask", "", id="Dataset-with-collate"),
        pytest.param("HFLinesTask", "", id="HF-datasets"),
        pytest.param("AugmentedLinesTask", ", num_workers: 2", id="workers-with-augmentation"),
    ],
)
def test_a_killed_run_resumes_to_the_same_losses_and_weights(tmp_path: Path, start, task: str, data: str) -> None:
    run = ["--config", config(tmp_path, task, data), *RUN]
    reference = TrainDir(tmp_path / "reference")
    uninterrupted = start("train.py", "--train-dir", str(reference.root), *run)
    killed = TrainDir(tmp_path / "killed")
    trainer = start("train.py", "--train-dir", str(killed.root), *run)
    assert kill_trainer_at_some_moment(trainer, killed, random.Random(task)) == -9, trainer.output()
    resumed = start("train.py", "--train-dir", str(killed.root), *run)
    assert resumed.wait_while_logging() == 0, resumed.output()
    assert "resumed from ckpt-" in resumed.output()
    assert uninterrupted.wait_while_logging() == 0, uninterrupted.output()

    expected = scalar_points(reference.train_run, "loss")
    assert len(expected) == STEPS
    assert scalar_points(killed.train_run, "loss") == expected
    final, reference_final = (torch.load(d.checkpoint(STEPS), weights_only=True)["model"] for d in (killed, reference))
    assert all(torch.equal(final[name], weights) for name, weights in reference_final.items())


def test_a_stream_is_refused_at_start(tmp_path: Path, start) -> None:
    stream = config(tmp_path, "StreamBlobsTask", "")
    trainer = start("train.py", "--train-dir", str(tmp_path / "run"), "--config", stream)
    assert trainer.wait() == 2
    lines = trainer.output().strip().splitlines()
    assert lines[-1].startswith("train.py: error: ") and "IterableDataset" in lines[-1], lines
    assert "Traceback" not in trainer.output()
