"""train.nan_policy, in one place: what a NaN/Inf loss (or gradient norm) does to training.

- `stop` (the default): the guard remembers the first step whose loss (or, without a gradient scaler,
  gradient norm) was NaN/Inf and stops the run before anything computed from it is logged or saved:
  train.py's log line and its Checkpointer call `check` first, so no checkpoint ever holds weights
  broken by it. The check stays on the device, so steps need no host sync; `check` syncs.
- `skip_step`: a step whose loss or gradient norm is NaN/Inf on any rank skips its update (`skips`).
"""

from __future__ import annotations

import logging

import torch

from shared.errors import RunAborted
from shared.training.distributed import Distributed

log = logging.getLogger(__name__)


class NonFiniteGuard:
    def __init__(
        self, policy: str, device: torch.device, check_grad_norm: bool, group: Distributed, newest_checkpoint: int
    ) -> None:
        """`policy`: train.nan_policy; `newest_checkpoint`: the step training resumed from (0: none), which a
        refusal names."""
        self.policy, self.device, self.check_grad_norm, self.group = policy, device, check_grad_norm, group
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.newest_checkpoint = newest_checkpoint

    def skips(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """skip_step: whether `step` skips its update; all ranks skip, or none (collective under torchrun)."""
        if self.policy != "skip_step":
            return False
        bad = not bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if not self.group.agree([bad], self.device)[0]:
            return False
        log.warning("step %d: loss or gradient norm is NaN/Inf; skipped its update (train.nan_policy)", step)
        return True

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        if self.policy != "stop":
            return
        finite = torch.isfinite(loss)
        if self.check_grad_norm:
            finite &= torch.isfinite(grad_norm)
        self.first = torch.where((self.first < 0) & ~finite, step, self.first)

    def committed(self, step: int) -> None:
        """A checkpoint of `step` is committed: the newest a refusal names."""
        self.newest_checkpoint = step

    def check(self) -> None:
        """stop: RunAborted on every rank if any rank saw a NaN/Inf step (collective under torchrun)."""
        first = int(self.first)
        bad_step = self.group.earliest(first if first >= 0 else None, self.device)
        if bad_step is not None:
            raise RunAborted(
                f"the loss or gradient norm became NaN/Inf at step {bad_step}; stopped without saving, so the newest "
                f"checkpoint (step {self.newest_checkpoint}) predates it. Lower train.lr, set train.grad_clip_norm, "
                "check the data, or set train.nan_policy=skip_step to skip such steps"
            )
