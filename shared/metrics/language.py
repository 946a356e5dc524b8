"""Language-model metrics over next-token logits `[..., vocab]` and token ids `[...]`, streamed as sums,
so a large vocabulary costs one batch's logits, never the whole evaluation's."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from shared.metrics.base import Mean


def _flat(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits, tokens = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
    if ignore_index is not None:
        kept = tokens != ignore_index
        logits, tokens = logits[kept], tokens[kept]
    return logits, tokens


class _PerToken:
    """A mean over the tokens that are not `ignore_index` (padding, say) of what `score` sums per batch."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index, self.mean = ignore_index, Mean()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        logits, tokens = _flat(outputs, targets, self.ignore_index)
        self.mean.add(self.score(logits, tokens), tokens.numel())

    def score(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Perplexity(_PerToken):
    """exp of the mean negative log-likelihood per token."""

    higher_is_better = False

    def score(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), tokens, reduction="sum")

    def compute(self) -> float:
        return math.exp(self.mean.value())


class TokenAccuracy(_PerToken):
    """The fraction of tokens whose most likely next token is the true one."""

    higher_is_better = True

    def score(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=-1) == tokens).sum()

    def compute(self) -> float:
        return self.mean.value()
