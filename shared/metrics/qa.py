"""Extractive question answering, judged as SQuAD is: the best answer span decoded from start and end
logits, then exact match and token F1 against the true span, streamed (a batch at a time).

Outputs are a mapping (or a Hugging Face `QuestionAnsweringModelOutput`) with `start_logits` and
`end_logits` `[batch, length]` and the `input_ids` `[batch, length]` they were computed for; targets are
`[batch, 2]`, the true span's first and last position (inclusive). Positions a model must not answer
(the question, padding) carry very low logits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from shared.metrics.base import Mean


def _part(outputs: Any, name: str) -> torch.Tensor:
    return outputs[name] if isinstance(outputs, Mapping) else getattr(outputs, name)


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_answer_length: int) -> torch.Tensor:
    """`[batch, 2]`: per example the (start, end) with end >= start and at most `max_answer_length` tokens
    that maximizes start_logit + end_logit, SQuAD's decoding."""
    length = start_logits.shape[-1]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    offsets = torch.arange(length, device=scores.device)
    width = offsets[None, :] - offsets[:, None]  # end - start
    scores = scores.masked_fill(~((width >= 0) & (width < max_answer_length)), float("-inf"))
    best = scores.flatten(1).argmax(dim=1)
    return torch.stack([best // length, best % length], dim=1)


def token_f1(predicted: list[int], true: list[int]) -> float:
    """SQuAD's F1: the harmonic mean of precision and recall of the tokens the two answers share."""
    common = sum((Counter(predicted) & Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


class _SpanScore:
    """A mean over examples of `score(predicted tokens, true tokens)` for the decoded best spans; tokens in
    `ignored` (articles, punctuation: SQuAD's normalization) are left out of both answers."""

    higher_is_better = True

    def __init__(self, max_answer_length: int, ignored: frozenset[int] = frozenset()) -> None:
        self.max_answer_length, self.ignored, self.mean = max_answer_length, ignored, Mean()

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        spans = best_spans(_part(outputs, "start_logits"), _part(outputs, "end_logits"), self.max_answer_length)
        ids = _part(outputs, "input_ids").tolist()
        total = 0.0
        for row, (start, end), (true_start, true_end) in zip(ids, spans.tolist(), targets.tolist(), strict=True):
            predicted = [t for t in row[start : end + 1] if t not in self.ignored]
            true = [t for t in row[true_start : true_end + 1] if t not in self.ignored]
            total += self.score(predicted, true)
        self.mean.add(total, len(ids))

    def score(self, predicted: list[int], true: list[int]) -> float:
        raise NotImplementedError

    def compute(self) -> float:
        return self.mean.value()


class ExactMatch(_SpanScore):
    """The fraction of examples whose decoded answer is the true one, token for token."""

    def score(self, predicted: list[int], true: list[int]) -> float:
        return float(predicted == true)


class TokenF1(_SpanScore):
    """The mean over examples of the decoded answer's token F1 against the true one."""

    def score(self, predicted: list[int], true: list[int]) -> float:
        return token_f1(predicted, true)
