"""The parts train.py assembles: optimizer by name, warmup + cosine/constant schedule, parameter counts,
and the resumable state a checkpoint holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shared.config import TrainConfig
from shared.runtime import seeding
from shared.training.data import DataPosition
from shared.training.distributed import Distributed
from shared.training.feedback import Feedback


def build_optimizer(model: nn.Module, options: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names; `fused` (CUDA) takes torch's single-kernel update where it has one."""
    params = [p for p in model.parameters() if p.requires_grad]
    common: dict[str, Any] = {"lr": options.lr, "weight_decay": options.weight_decay}
    if options.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=options.momentum, **common)
    if fused:
        common["fused"] = True
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=options.momentum, **common)
    if options.optimizer == "adam":
        return torch.optim.Adam(params, **common)
    return torch.optim.AdamW(params, **common)


def lr_multiplier(options: TrainConfig) -> Callable[[int], float]:
    """The factor on the base LR after `step` optimizer steps: linear warmup, then cosine or constant."""
    warmup, total, floor = options.warmup_steps, options.steps, options.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if options.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_schedule(
    optimizer: torch.optim.Optimizer, options: TrainConfig, feedback: Callable[[], float] = lambda: 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule times `feedback()`, the multiplier evaluation feedback sets (shared/training/feedback.py)."""
    schedule = lr_multiplier(options)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) * feedback())


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@dataclass
class TrainState:
    """Everything needed to continue exactly where a checkpoint left off."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    position: DataPosition
    feedback: Feedback | None = None  # its state (LR multiplier, policies) goes into each checkpoint
    step: int = 0
    group: Distributed = field(default_factory=Distributed.alone)
    sharded: bool = False  # FSDP: weights and optimizer state are saved by checkpoints.sharded, not state_dict()
    forward: nn.Module = field(init=False)  # the model as the step calls it: DDP- or torch.compile-wrapped

    def __post_init__(self) -> None:
        self.forward = self.model

    def state_dict(self) -> dict[str, Any]:
        """Collective under torchrun (the ranks' RNG states are gathered): every rank calls it."""
        weights = {} if self.sharded else {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        rng = seeding.rng_state()
        return weights | {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self.position.state_dict(),
            "rng": rng,  # rank 0's: what a run with another world size continues with
            **({"rng_by_rank": self.group.gather(rng)} if self.group.enabled else {}),
            **({"feedback": self.feedback.state_dict()} if self.feedback else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.sharded:  # shared.checkpoints.sharded.load_into restored the shards already
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved with fp16 off; a fresh scaler is right then
            self.scaler.load_state_dict(state["scaler"])
        self.position.epoch, self.position.batch = state["data"]["epoch"], state["data"]["batch"]
        by_rank = state.get("rng_by_rank") or []
        seeding.set_rng_state(by_rank[self.group.rank] if len(by_rank) == self.group.world_size else state["rng"])
        if self.feedback and "feedback" in state:  # older checkpoints have none: feedback starts fresh
            self.feedback.load_state_dict(state["feedback"])
        self.step = state["step"]
