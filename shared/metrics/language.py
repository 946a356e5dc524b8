"""Language-model metrics over next-token logits `[..., vocab]` and token ids `[...]`, streamed as sums,
so a large vocabulary costs one batch's logits, never the whole evaluation's.

Outputs may be the logits or a model output holding them (a Hugging Face `ModelOutput`, a dict with
`logits`). With `shift=True` the targets are Hugging Face's causal-LM `labels`, the inputs themselves
(position t is predicted from t - 1): the metric shifts them as the model's own loss does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from shared.metrics.base import Mean

# What Hugging Face models leave out of the loss: padding and prompt tokens in `labels`.
HF_IGNORE_INDEX = -100


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs: the tensor itself, or its `logits` (a ModelOutput, a dict)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"outputs of type {type(outputs).__name__} are neither logits nor hold `logits`")
    return logits


def _flat(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if shift:
        logits, targets = logits[..., :-1, :], targets[..., 1:]
    logits, tokens = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if ignore_index is not None:
        kept = tokens != ignore_index
        logits, tokens = logits[kept], tokens[kept]
    return logits, tokens


class _PerToken:
    """A mean over the tokens that are not `ignore_index` (padding, say) of what `score` sums per batch;
    `shift`: the targets are unshifted causal-LM labels (Hugging Face's)."""

    def __init__(self, ignore_index: int | None = None, shift: bool = False) -> None:
        self.ignore_index, self.shift, self.mean = ignore_index, shift, Mean()

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        logits, tokens = _flat(logits_of(outputs), targets, self.ignore_index, self.shift)
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


def causal_lm_metrics() -> dict[str, _PerToken]:
    """Perplexity and token accuracy of a Hugging Face causal LM: its outputs, its unshifted `labels`."""
    return {
        "perplexity": Perplexity(HF_IGNORE_INDEX, shift=True),
        "token_accuracy": TokenAccuracy(HF_IGNORE_INDEX, shift=True),
    }
