"""Runs of other trainers' own loops on the digits task's model, for the foreign checkpoint sources' tests:
`python -m tests.foreign_runs lightning|dcp OUT STEPS EVERY` trains on the CPU and saves every EVERY steps
into OUT the way that library does (the model is what `TINY` makes of configs/digits.yaml, so an eval.yaml
with the same task, model and data sections evaluates its checkpoints)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from shared.config.sources import read_with_overrides
from shared.tasks.base import Task
from shared.tasks.loading import build_task, resolve_config

TINY = ["model.channels=8", "model.hidden=32", "data.batch_size=32"]


def digits() -> Task:
    return build_task(resolve_config(read_with_overrides("configs/digits.yaml", TINY)))


def lightning_run(out: Path, steps: int, every: int) -> None:
    """A LightningModule holding the task's model as `self.model` (its weights named `model.*`), trained by a
    Lightning Trainer whose ModelCheckpoint keeps every checkpoint. Its hyper-parameters, saved in each
    checkpoint, hold types of the training program's own (a Namespace, a Path), as real ones do."""
    import argparse

    import lightning.pytorch as pl

    task = digits()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"args": argparse.Namespace(steps=steps, every=every), "out": out})
            self.model = task.build_model()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
            inputs, targets = task.split(batch)
            return task.loss(task.forward(self.model, inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    saver = pl.callbacks.ModelCheckpoint(dirpath=out, every_n_train_steps=every, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", callbacks=[saver], logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(task.train_data(), batch_size=32, shuffle=True)
    trainer.fit(Module(), loader)


def dcp_rank(rank: int, out: Path, steps: int, every: int, init: str) -> None:
    """One of two gloo ranks: DDP over the task's model, saving `{"model": ..., "optimizer": ...}` with
    torch.distributed.checkpoint into `step-<N>/` (torchtitan's layout) every `every` steps."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    task = digits()
    model = torch.nn.parallel.DistributedDataParallel(task.build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = task.train_data()
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, seed=0)
    batches = iter(torch.utils.data.DataLoader(data, batch_size=32, sampler=sampler))
    for step in range(1, steps + 1):
        inputs, targets = task.split(next(batches))
        loss = task.loss(task.forward(model, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            weights, optim = get_state_dict(model, optimizer)
            dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=out / f"step-{step}")
    dist.destroy_process_group()


def run_to_end(library: str, folder: Path, steps: int, every: int) -> Path:
    """The checkpoints folder (in `folder`) of `library`'s loop, run to its end in a process of its own."""
    out = folder / "checkpoints"
    args = [sys.executable, "-m", "tests.foreign_runs", library, str(out), str(steps), str(every)]
    done = subprocess.run(args, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def main() -> None:
    library, out, steps, every = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if library == "lightning":
        lightning_run(out, steps, every)
    else:
        init = f"file://{out.parent / ('.' + out.name + '.rendezvous')}"
        # fork: the ranks inherit this process's imports (spawn would import torch twice more)
        torch.multiprocessing.start_processes(dcp_rank, args=(out, steps, every, init), nprocs=2, start_method="fork")
    print("finished", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
