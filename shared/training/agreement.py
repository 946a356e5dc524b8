"""What one rank decides alone (its clock, a stop signal), agreed by all ranks at the same steps.

Under torchrun the ranks agree at log steps only, so steps between them need no collective; alone,
there is nobody to agree with, and the flag counts at every step.
"""

from __future__ import annotations

import torch

from shared.training.distributed import Distributed


class Agreement:
    def __init__(self, group: Distributed, device: torch.device, every_steps: int) -> None:
        self.group, self.device, self.every_steps = group, device, every_steps

    def any(self, step: int, flag: bool) -> bool:
        """Whether `flag` holds on any rank, at a step where the ranks agree; False between them."""
        if self.group.enabled and step % self.every_steps:
            return False
        return self.group.agree([flag], self.device)[0]
