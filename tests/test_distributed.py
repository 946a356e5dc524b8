"""train.py under torchrun on the CPU (gloo, 2 processes): DDP stops on SIGTERM and resumes to the same
losses; FSDP writes sharded checkpoint folders that eval.py reads in one process, and evaluation feedback
steers both ranks alike; a sharded checkpoint whose metadata would run code is refused."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from shared.checkpoints.format import load
from shared.checkpoints.retention import RetentionPolicy, apply_retention
from shared.checkpoints.store import list_checkpoints, remove_stale_temps
from shared.errors import CheckpointError
from shared.evaluation.export import load_best, read_best
from shared.protocol.layout import METADATA, TrainDir
from shared.protocol.ledger import read_records
from tests.conftest import HANG_GUARD, ROOT, Proc, RunsCodeWhenUnpickled, scalar_points, wait_for_watching, wait_until
from tests.test_feedback import EXPECTED, FEEDBACK_RUN, decided

# Tiny: a few seconds per torchrun launch on 2 cores, most of it start-up.
TINY = ["--set", "model.channels=8", "--set", "model.hidden=16"]
RUN = [
    "--config", "configs/digits.yaml",
    *TINY,
    "--set", "data.batch_size=32",
    "--set", "train.warmup_steps=5",
    "--set", "log.every_steps=5",
]  # fmt: skip


@pytest.fixture(scope="module")
def gloo(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skips a torchrun test, saying why, where a gloo process group cannot start."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch was built without torch.distributed/gloo")
    store = tmp_path_factory.mktemp("gloo") / "store"
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    except (RuntimeError, ValueError) as err:
        pytest.skip(f"gloo cannot start here: {err}")
    dist.destroy_process_group()


def torchrun(start, train_dir: Path, *args: str) -> Proc:
    """train.py under torchrun with 2 CPU processes (gloo, also where there is a GPU); `args` carry the config."""
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return start(*launch, "train.py", "--train-dir", str(train_dir), "--device", "cpu", *args)


def losses(train_dir: Path) -> list[tuple[int, float]]:
    return scalar_points(train_dir / "train", "loss")


@pytest.mark.slow
@pytest.mark.long
def test_ddp_stopped_by_sigterm_resumes_to_the_same_losses(tmp_path: Path, start, gloo: None) -> None:
    """SIGTERM to torchrun reaches both ranks; they agree on the stop step, rank 0 saves it, and the
    resumed run logs the same loss at every step as an uninterrupted 2-process run."""
    steps = ["--set", "train.steps=150", "--set", "checkpoint.every_steps=50"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    uninterrupted = torchrun(start, whole, *RUN, *steps)  # side by side: much of a launch is waiting
    first = torchrun(start, split, *RUN, *steps)
    # The heartbeat is written once the ranks handle SIGTERM, before their first step.
    wait_until((split / "heartbeat.json").exists, 120, "training to start")
    first.signal(signal.SIGTERM)
    first.wait()
    assert uninterrupted.wait() == 0
    stopped_at = list_checkpoints(split / "checkpoints")[-1].step
    assert stopped_at < 150, "the run finished before the signal; nothing was resumed"
    assert not (split / "finished.json").exists()
    assert "stopping at the next safe point" in first.output()

    assert torchrun(start, split, *RUN, *steps).wait() == 0
    assert losses(split) == losses(whole)
    assert [s for s, _ in losses(whole)] == list(range(5, 151, 5))


@pytest.mark.slow
@pytest.mark.long
def test_fsdp_folders_are_evaluated_in_one_process_and_steer_both_ranks(tmp_path: Path, start, gloo: None) -> None:
    """2 FSDP ranks write sharded checkpoint folders; the eval.py daemon and eval.py ad hoc read them in one
    process with no process group; the daemon's ledger, read by rank 0 and shared, makes both ranks cut the
    LR and stop early at the same steps as one process does (tests/test_feedback.py)."""
    train_dir = TrainDir(tmp_path)
    evaluator = start("eval.py", "--train-dir", str(tmp_path))
    wait_for_watching(evaluator)
    trainer = torchrun(start, tmp_path, *FEEDBACK_RUN, *TINY, "--set", "train.strategy=fsdp")
    assert trainer.wait() == 0, trainer.output()
    assert evaluator.wait() == 0, evaluator.output()
    assert [(d["eval_step"], d["applied_step"], d["action"]) for d in decided(train_dir)] == EXPECTED
    assert json.loads(train_dir.finished.read_text())["reason"] == "early_stop"

    found = list_checkpoints(train_dir.checkpoints)
    assert [c.step for c in found] == [40, 80, 120, 160, 170]
    for checkpoint in found:
        assert {METADATA, "state.pt", "__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(checkpoint.path))
    records = read_records(train_dir.results)
    assert [(r["step"], r["status"]) for r in records] == [(c.step, "ok") for c in found]

    adhoc = subprocess.run(
        [sys.executable, "eval.py", "--train-dir", str(tmp_path), "--checkpoint", "latest", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert adhoc.returncode == 0, adhoc.stderr
    assert json.loads(adhoc.stdout)["metrics"] == records[-1]["metrics"]  # the daemon and ad hoc agree
    assert read_best(train_dir)["step"] in {c.step for c in found}  # exported from the evaluator's memory
    assert isinstance(load_best(tmp_path), torch.nn.Module)  # best/: safetensors, loadable without DCP


def test_sharded_checkpoint_with_code_in_its_metadata_is_refused(tmp_path: Path) -> None:
    """A `.metadata` pickle that would run a command is refused, naming the file; the command never runs."""
    folder = tmp_path / "checkpoints" / "ckpt-000000010"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (folder / METADATA).write_bytes(pickle.dumps(RunsCodeWhenUnpickled(marker)))
    torch.save({"format_version": 1, "step": 10}, folder / "state.pt")
    with pytest.raises(CheckpointError, match=r"\.metadata.*refused.*(posix|os)\.system"):
        load(folder)
    assert not marker.exists()


def test_folder_checkpoints_are_listed_cleaned_and_retired(tmp_path: Path) -> None:
    """Sharded checkpoints are folders: listed by name, their temp folders cleaned at start, retired whole."""
    folder = tmp_path / "checkpoints"
    for name in ("ckpt-000000010", "ckpt-000000020", "ckpt-000000030.pt", ".ckpt-000000040.tmp", "ckpt-5"):
        path = folder / name
        if name.endswith(".pt"):
            folder.mkdir(exist_ok=True)
            path.write_bytes(b"x")
        else:
            path.mkdir(parents=True)
            (path / "__0_0.distcp").write_bytes(b"x")
    assert [c.step for c in list_checkpoints(folder)] == [10, 20, 30]
    assert [p.name for p in remove_stale_temps(folder)] == [".ckpt-000000040.tmp"]
    deleted = apply_retention(folder, RetentionPolicy(max_to_keep=1), last_evaluated=None)
    assert deleted == [10, 20]
    assert sorted(os.listdir(folder)) == ["ckpt-000000030.pt", "ckpt-5", "retired.jsonl"]  # 10, 20 noted
