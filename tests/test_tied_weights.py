"""Shared storage kept: tied weights (a transformers GPT-2 whose output layer is its input embedding) are stored
once in the checkpoint, in the weights file beside it and in best/model.safetensors, and best/ loads strictly
into a fresh model of the same class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_model

from shared.checkpoints.snapshots import HostSnapshot
from shared.evaluation import export
from shared.protocol.layout import TrainDir, weights_name
from shared.tasks.loading import build_task, load_config


def distinct_bytes(state: dict[str, torch.Tensor]) -> int:
    """The bytes of the distinct storages under a state dict's tensors."""
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in state.values()}
    return sum(storages.values())


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_host_snapshot_keeps_shared_storage_and_the_values_of_its_moment() -> None:
    embedding = torch.randn(8, 4)
    state = {"model": {"embed": embedding, "head": embedding, "row": embedding[2]}, "step": torch.tensor(3)}
    snapshot = HostSnapshot()
    first, _ = snapshot.take(state)
    embedding.add_(1)  # training goes on after the snapshot
    copy = first["model"]
    assert same_storage(copy["embed"], copy["head"]) and same_storage(copy["row"], copy["embed"])
    assert torch.equal(copy["row"], copy["embed"][2]) and torch.equal(copy["head"] + 1, embedding)
    second, _ = snapshot.take(state)  # the buffers are reused, the values are the new ones
    assert same_storage(second["model"]["embed"], copy["embed"])
    assert torch.equal(second["model"]["head"], embedding) and int(second["step"]) == 3


@pytest.mark.slow
def test_tied_weights_are_stored_once_and_best_loads_strictly_into_a_fresh_model(tmp_path: Path, start) -> None:
    config = tmp_path / "gpt2.yaml"
    config.write_text(
        "task: tests.tied_task:TiedGPT2Task\nmodel: {dim: 64, vocab: 2048}\ndata: {batch_size: 8}\n"
        "train: {steps: 20, warmup_steps: 2}\ncheckpoint: {every_steps: 10, async_save: true}\n"
    )
    train_dir = TrainDir(tmp_path / "run")
    trainer = start("train.py", "--train-dir", str(train_dir.root), "--config", str(config))
    evaluator = start("eval.py", "--train-dir", str(train_dir.root))
    assert trainer.wait_while_logging() == 0, trainer.output()
    assert evaluator.wait_while_logging() == 0, evaluator.output()

    model = build_task(load_config(config)).build_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    weights = distinct_bytes(model.state_dict())
    assert weights < sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 0.7
    # Each file: its distinct tensors (AdamW keeps two moments per weight) and a little for the archive.
    assert (train_dir.checkpoints / weights_name(20)).stat().st_size <= 1.02 * weights
    assert train_dir.checkpoint(20).stat().st_size <= 1.02 * 3 * weights
    best = train_dir.best / export.WEIGHTS
    assert best.stat().st_size <= 1.02 * weights

    step = export.read_best(train_dir)["step"]
    saved = torch.load(train_dir.checkpoint(step), weights_only=True)["model"]
    fresh = type(model)(model.config)
    fresh.load_state_dict(export.read_weights(best), strict=True)  # what export.load_best does
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # still tied: one tensor loaded into both names
    assert all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in saved.items())
    again = type(model)(model.config)
    assert load_model(again, best) == (set(), [])  # safetensors' own strict loader, as docs/evaluation.md says
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in saved.items())
    assert type(export.load_best(train_dir.root)) is type(model)
