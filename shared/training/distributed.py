"""Several processes training one model: the process group torchrun describes in the environment.

`python train.py` runs alone (`Distributed.alone()`: every collective below is then a no-op), and
`torchrun --nproc-per-node N train.py` runs N ranks that share one train_dir. Only rank 0 writes
(summaries, heartbeat, checkpoints, markers); every decision a rank could make on its own (stop on a
signal, save by the clock, abort on NaN) is first agreed by all ranks, so they always take the same
steps and stop at the same one.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shared.errors import UsageError

log = logging.getLogger(__name__)

# Collectives wait this long for a rank that stopped answering, then fail instead of hanging forever.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    # Two gloo groups of all ranks: DCP's asynchronous saves run collectives in a background thread, and
    # a group must not be used by two threads at once; small objects (CPU tensors in them) go over gloo.
    checkpoint_group: Any = None
    object_group: Any = None

    @staticmethod
    def alone() -> Distributed:
        return Distributed()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes to the train_dir."""
        return self.rank == 0

    def agree(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag true on every rank when it is true on any rank (one small all-reduce; a no-op alone)."""
        if not self.enabled:
            return flags
        value = torch.tensor([int(f) for f in flags], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return [bool(v) for v in value.tolist()]

    def earliest(self, step: int | None, device: torch.device) -> int | None:
        """The smallest of the ranks' steps (None where a rank has none), the same on every rank."""
        if not self.enabled:
            return step
        value = torch.tensor([-1 if step is None else step], dtype=torch.long, device=device)
        value = torch.where(value < 0, torch.iinfo(torch.long).max, value)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        found = int(value.item())
        return None if found == torch.iinfo(torch.long).max else found

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (a small picklable object from our own code), on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.object_group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.object_group)  # gloo: the tensors stay on the CPU
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


@contextlib.contextmanager
def joined(device_arg: str) -> Iterator[tuple[Distributed, str]]:
    """`init`, and leaving the process group on the way out, so NCCL does not warn of one left open."""
    try:
        yield init(device_arg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def init(device_arg: str) -> tuple[Distributed, str]:
    """Join the process group torchrun set up (WORLD_SIZE in the environment), or run alone.

    NCCL with one GPU per rank (cuda:LOCAL_RANK) when CUDA is there and --device allows it, else gloo
    on the CPU. Returns the group and the device each rank trains on.
    """
    if "WORLD_SIZE" not in os.environ:
        return Distributed.alone(), device_arg
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = device_arg in ("auto", "cuda") and torch.cuda.is_available()
    if device_arg.startswith("cuda:"):
        raise UsageError(
            f"--device {device_arg}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda (or auto), "
            "and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
        device = torch.device("cpu")
    checkpoint_group, object_group = (dist.new_group(backend="gloo", timeout=TIMEOUT) for _ in range(2))
    if rank != 0:  # one voice in the log: the other ranks report only problems
        logging.getLogger().setLevel(logging.WARNING)
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, dist.get_backend())
    return Distributed(rank, world_size, checkpoint_group, object_group), str(device)


def wrap(model: nn.Module, strategy: str, group: Distributed, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP replicates the model; FSDP shards it in place (FSDP2).

    DDP returns a wrapper (checkpoints keep the unwrapped module's names); with one process it would
    only all-reduce with itself, at a cost (0.78x the steps/s on an H100, bench/RESULTS.md), so the
    model runs unwrapped then. fully_shard changes the model itself, one shard group per direct child,
    then the root.
    """
    if strategy == "fsdp":
        if not group.enabled:
            raise UsageError(
                "train.strategy=fsdp needs torchrun: start it as torchrun --nproc-per-node N train.py ... "
                "(N=1 on one GPU)"
            )
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (group.world_size,))
        for child in model.children():
            if any(p.requires_grad for p in child.parameters()):
                fully_shard(child, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if group.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def gradient_sync(module: nn.Module, now: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients at every backward; for the micro-batches before a step's last one
    (train.grad_accum_steps) it need not: they only accumulate locally."""
    if now or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: FSDP's gradient norm is a DTensor, which `.item()` and `torch.where` do not take."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
