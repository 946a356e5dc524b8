"""SQuAD-style span decoding and scoring (shared.metrics.qa) against hand-worked examples, and the span_qa
task's generated examples: every answer span holds the answer's words."""

from __future__ import annotations

import random

import pytest
import torch

from shared.metrics.qa import ExactMatch, TokenF1, best_spans, token_f1
from shared.tasks.span_qa import SLOTS, answers, example

NEVER = -1e4  # the logit of a position that cannot answer


def test_the_best_span_ends_at_or_after_its_start_and_is_at_most_the_longest_answer() -> None:
    start = torch.tensor([[NEVER, 1.0, 0.0, 0.0, 5.0], [NEVER, 2.0, 0.0, 0.0, 0.5]])
    end = torch.tensor([[NEVER, 0.0, 3.0, 0.0, 0.0], [NEVER, 0.0, 0.0, 0.0, 4.0]])
    # Row 0: (4, 2) would score 8.0, but ends before it starts; (4, 4) = 5.0 beats (1, 2) = 4.0.
    # Row 1: (1, 4) scores 6.0 but is 4 tokens long; with at most 3, (4, 4) = 4.5 wins.
    assert best_spans(start, end, max_answer_length=3).tolist() == [[4, 4], [4, 4]]
    assert best_spans(start, end, max_answer_length=4).tolist() == [[4, 4], [1, 4]]


@pytest.mark.parametrize(
    ("predicted", "true", "f1"),
    [
        pytest.param([1, 2], [1, 2], 1.0, id="same"),
        pytest.param([1, 2, 3], [2, 3], 0.8, id="one-extra"),  # precision 2/3, recall 1
        pytest.param([4], [2, 3], 0.0, id="none-shared"),
        pytest.param([], [2], 0.0, id="empty"),
    ],
)
def test_token_f1(predicted: list[int], true: list[int], f1: float) -> None:
    assert token_f1(predicted, true) == pytest.approx(f1)


def test_exact_match_and_f1_leave_ignored_tokens_out() -> None:
    ids = torch.tensor([[5, 9, 6, 7, 8], [5, 9, 6, 7, 8]])  # 9: an article, ignored
    start = torch.full((2, 5), NEVER).index_put_((torch.tensor([0, 1]), torch.tensor([1, 2])), torch.tensor(1.0))
    end = torch.full((2, 5), NEVER).index_put_((torch.tensor([0, 1]), torch.tensor([2, 4])), torch.tensor(1.0))
    outputs = {"start_logits": start, "end_logits": end, "input_ids": ids}
    targets = torch.tensor([[2, 2], [2, 3]])  # row 0: "the 6" for "6"; row 1: "6 7 8" for "6 7"
    metrics = {"em": ExactMatch(4, frozenset({9})), "f1": TokenF1(4, frozenset({9}))}
    for metric in metrics.values():
        metric.update(outputs, targets)
    assert metrics["em"].compute() == pytest.approx(0.5)
    assert metrics["f1"].compute() == pytest.approx((1.0 + 0.8) / 2)


def test_every_generated_answer_span_holds_the_answer() -> None:
    rng, known = random.Random(0), {value for _, _, listed in SLOTS.values() for value in answers(listed)}
    for _ in range(200):
        tokens, (start, end) = example(rng, facts=3)
        assert " ".join(tokens[start : end + 1]) in known
        assert tokens.index("[SEP]") < start <= end < len(tokens) - 1
