"""Runs of other trainers' own loops on the digits task's model, for the foreign checkpoint sources' tests:
`python -m tests.foreign_runs lightning|dcp OUT STEPS EVERY` trains on the CPU and saves every EVERY steps
into OUT the way that library does (the model is what `TINY` makes of configs/digits.yaml, so an eval.yaml
with the same task, model and data sections evaluates its checkpoints)."""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from shared.config.sources import read_with_overrides
from shared.protocol.layout import METADATA
from shared.tasks.base import Task
from shared.tasks.loading import build_task, resolve_config

if TYPE_CHECKING:
    from tests.conftest import Proc

ROOT = Path(__file__).resolve().parents[1]

HANG_SECS = 300  # a trainer's hang guard: ten times what a run takes on a busy 2-core machine
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

    faulthandler.dump_traceback_later(HANG_SECS, exit=True)  # a hung rank says where, and ends (the parent
    torch.set_num_threads(1)  # starts no such thread: a thread's state does not survive the fork)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    task = digits()
    model = torch.nn.parallel.DistributedDataParallel(task.build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = task.train_data()
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=32, sampler=sampler)
    batches = (batch for epoch in range(steps) for batch in loader)  # as many epochs as it takes
    for step in range(1, steps + 1):
        inputs, targets = task.split(next(batches))
        loss = task.loss(task.forward(model, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            weights, optim = get_state_dict(model, optimizer)
            dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=out / f"step-{step}")
    dist.barrier()
    dist.destroy_process_group()


# A checkpoint planted incomplete: plant(checkpoints folder, a complete checkpoint, step) -> (its path, the
# call that completes it).
Plant = Callable[[Path, Path, int], tuple[Path, Callable[[], None]]]


@dataclass
class DaemonBeside:
    """A foreign run evaluated by the eval.py daemon beside it: what the tests check."""

    checkpoints: Path  # the trainer's checkpoints folder
    records: list[dict[str, Any]]  # the ledger at the end
    completed: dict[int, float]  # step -> when its checkpoint became complete (its file's or `.metadata`'s mtime)
    planted: int  # the step of the checkpoint planted incomplete, completed once training ended
    refused: str  # the last line of `eval.py --checkpoint <the planted one>` while it was incomplete
    adhoc: dict[str, Any]  # `eval.py --checkpoint <the last one trained> --json`


def run_beside_the_daemon(
    start: Callable[..., Proc], folder: Path, source: dict[str, Any], steps: int, every: int, plant: Plant
) -> DaemonBeside:
    """`source["format"]`'s loop run to its end with the eval.py daemon beside it. The trainer (its process
    group) is SIGSTOPped once its first checkpoint is complete; `plant` puts an incomplete checkpoint of a
    later step beside it; once the first step is recorded the daemon is SIGKILLed and started again, and the
    trainer continued once the new one records. After training, the planted checkpoint is refused ad hoc, then
    completed; the daemon is stopped once it recorded it."""
    from shared.checkpoints.sources import resolve_source
    from shared.protocol.ledger import read_records
    from tests.conftest import HANG_GUARD, wait_until, wait_while_progressing

    raw = read_with_overrides("configs/digits.yaml", TINY)
    config = {key: raw[key] for key in ("task", "seed", "model", "data", "eval")} | {"source": source}
    (folder / "eval.yaml").write_text(json.dumps(config))
    checkpoints = folder / "run"  # --train-dir: the trainer's checkpoints folder, where the results go too
    checkpoints.mkdir()
    args = ("--train-dir", str(checkpoints), "--config", str(folder / "eval.yaml"))
    results = checkpoints / "eval" / "results.jsonl"
    recorded = lambda: {r["step"] for r in read_records(results)} if results.exists() else set()  # noqa: E731
    reader = resolve_source(dict(source)).build()
    daemons = [start("eval.py", *args)]
    wait_until(lambda: "waiting for the first complete checkpoint" in daemons[0].output(), HANG_GUARD, "eval.py")
    command = [sys.executable, "-m", "tests.foreign_runs", source["format"], str(checkpoints), str(steps), str(every)]
    with trainer_group(command, folder / "trainer.log") as trainer:
        wait_while_progressing(lambda: bool(reader.list(checkpoints)), trainer, "the first complete checkpoint")
        os.killpg(trainer.popen.pid, signal.SIGSTOP)  # training waits while the daemon is killed and restarted
        first = reader.list(checkpoints)[0]
        planted, complete_planted = plant(checkpoints, first.path, steps * 10)
        wait_until(lambda: first.step in recorded(), HANG_GUARD, f"step {first.step} recorded")
        daemons[0].signal(signal.SIGKILL)
        assert daemons[0].wait() == -signal.SIGKILL
        daemons.append(start("eval.py", *args))
        wait_until(lambda: "recording results" in daemons[1].output(), HANG_GUARD, "the restarted daemon to record")
        os.killpg(trainer.popen.pid, signal.SIGCONT)
        assert trainer.wait_while_logging() == 0, trainer.output()
    wait_until(lambda: set(range(every, steps + 1, every)) <= recorded(), HANG_GUARD, "every trained step recorded")
    refused = start("eval.py", *args, "--checkpoint", str(planted))
    assert refused.wait() != 0, refused.output()
    complete_planted()
    completed = {c.step: _completed_at(c.path) for c in reader.list(checkpoints)}
    wait_until(lambda: steps * 10 in recorded(), HANG_GUARD, "the planted checkpoint recorded once complete")
    last = next(c.path for c in reader.list(checkpoints) if c.step == steps)
    adhoc = start("eval.py", *args, "--checkpoint", str(last), "--json")
    assert adhoc.wait() == 0, adhoc.output()
    daemons[-1].signal(signal.SIGTERM)
    assert daemons[-1].wait() == 0, daemons[-1].output()
    return DaemonBeside(
        checkpoints, read_records(results), completed, steps * 10, refused.output().strip().splitlines()[-1],
        json.loads(adhoc.output().strip().splitlines()[-1]),
    )  # fmt: skip


@contextmanager
def trainer_group(command: list[str], log: Path) -> Iterator[Proc]:
    """The trainer in a process group of its own (its ranks too), SIGKILLed whole if the test ends before it.
    Its $TMPDIR is on another file system than its checkpoints where the machine has one (/dev/shm): Lightning
    then copies each checkpoint into place, growing under its name, as in a container with a mounted folder."""
    from tests.conftest import Proc

    elsewhere = Path("/dev/shm")
    other_fs = elsewhere.is_dir() and elsewhere.stat().st_dev != log.parent.stat().st_dev
    temp = Path(tempfile.mkdtemp(dir=elsewhere if other_fs else log.parent))
    env = {**os.environ, "TMPDIR": str(temp)}
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        yield Proc(popen, log)
    finally:
        with suppress(ProcessLookupError):  # none left: the usual end
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        shutil.rmtree(temp)


def assert_each_recorded_once(run: DaemonBeside, steps: int, every: int) -> list[float]:
    """Every checkpoint has one ok record, in step order, the planted one read only once complete and refused ad
    hoc before; ad hoc equals the daemon's record. The seconds from each checkpoint's completion to its record."""
    trained = [*range(every, steps + 1, every), run.planted]
    assert [(r["step"], r["status"]) for r in run.records] == [(step, "ok") for step in trained], run.records
    assert run.records[-1]["wall_time"] >= run.completed[run.planted], "read before it was complete"
    assert "not a complete checkpoint" in run.refused
    assert run.adhoc["metrics"] == next(r["metrics"] for r in run.records if r["step"] == steps)
    return [round(r["wall_time"] + r["seconds"] - run.completed[r["step"]], 2) for r in run.records]


def _completed_at(path: Path) -> float:
    """When a checkpoint became complete: the mtime of a file (renamed into place, or its last byte written),
    or of a DCP folder's `.metadata` (renamed into place last)."""
    return (path / METADATA if path.is_dir() else path).stat().st_mtime


def main() -> None:
    library, out, steps, every = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if library == "lightning":
        faulthandler.dump_traceback_later(HANG_SECS, exit=True)  # a hung run says where, and ends
        lightning_run(out, steps, every)
    else:
        with socket.socket() as probe:  # a loopback port free now, for the ranks' rendezvous
            probe.bind(("127.0.0.1", 0))
            init = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
        # fork: the ranks inherit this process's imports (spawn would import torch twice more)
        torch.multiprocessing.start_processes(dcp_rank, args=(out, steps, every, init), nprocs=2, start_method="fork")
    print("finished", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
