"""The built-in span-QA reader (`task: span_qa`): extractive question answering on text the repository
generates (no download), judged as SQuAD is, by exact match and token F1, and best by F1.

Each example is a few facts about different people ("maria lives in buenos aires .", "tom works as a bus
driver .") and a question about one of them ("where does maria live ?"); the answer is a span of the
facts. Words are the tokens (a fixed vocabulary of the templates' words). The input is
`[CLS] question [SEP] facts [SEP]`, padded to a fixed length; the targets are the answer's first and last
position. A small transformer encoder scores every position as start and end (the question and padding
never), and the metrics decode the best span with end >= start and at most `data.max_answer_tokens`.
"""

from __future__ import annotations

import functools
import random

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from shared import config
from shared.metrics.base import Metric
from shared.metrics.qa import ExactMatch, TokenF1
from shared.tasks.base import Task
from shared.tasks.language import LanguageModel, TinyTransformer

PAD, CLS, SEP = "[PAD]", "[CLS]", "[SEP]"
NAMES = ["maria", "tom", "aisha", "kenji", "olga", "pedro", "lena", "omar", "sofia", "ivan", "mei", "david"]
# Per slot: a fact's template, its question, and the answers it may hold (comma-separated; several words, some).
SLOTS = {
    "city": ("{name} lives in {value} .", "where does {name} live ?", "paris, buenos aires, new york, cairo, "
             "san francisco, oslo, hong kong, lima, rome"),
    "job": ("{name} works as a {value} .", "what does {name} work as ?", "doctor, bus driver, software engineer, "
            "baker, night nurse, pilot, high school teacher"),
    "year": ("{name} was born in {value} .", "when was {name} born ?", "1950, 1961, 1973, 1984, 1990, 1999, 2003, "
             "the spring of 1988, the winter of 1979"),
    "pet": ("{name} has a {value} .", "what pet does {name} have ?", "cat, black dog, small grey rabbit, parrot, "
            "goldfish, old horse, white cat"),
}  # fmt: skip
IGNORED = ("a", "the", "of", ".", "?")  # SQuAD's normalization leaves articles and punctuation out of F1
MAX_TOKENS = 64  # [CLS] question [SEP] up to data.facts facts [SEP], padded


def answers(listed: str) -> list[str]:
    return listed.split(", ")


@functools.cache
def vocabulary() -> dict[str, int]:
    words = {
        word
        for template, question, values in SLOTS.values()
        for text in (template, question, *answers(values))
        for word in text.split()
    }
    words |= set(NAMES)
    words -= {"{name}", "{value}"}
    return {word: index for index, word in enumerate([PAD, CLS, SEP, *sorted(words)])}


class SpanQAData(config.DataConfig):
    train_examples: int = Field(4000, ge=10, le=1_000_000, description="generated training examples")
    eval_examples: int = Field(500, ge=10, le=1_000_000, description="generated evaluation examples")
    facts: int = Field(3, ge=1, le=5, description="facts per example: one answers the question, the others distract")
    max_answer_tokens: int = Field(4, ge=1, le=MAX_TOKENS, description="the longest span the decoder answers")
    corpus_seed: config.Seed = Field(0, description="seeds the generated examples")


def example(rng: random.Random, facts: int) -> tuple[list[str], tuple[int, int]]:
    """One example's tokens and its answer span (first and last position)."""
    people = rng.sample(NAMES, facts)
    slots = [rng.choice(list(SLOTS)) for _ in people]
    values = [rng.choice(answers(SLOTS[slot][2])) for slot in slots]
    asked = rng.randrange(facts)
    question = SLOTS[slots[asked]][1].format(name=people[asked]).split()
    tokens, span = [CLS, *question, SEP], (0, 0)
    for person, slot, value in zip(people, slots, values, strict=True):
        before, after = SLOTS[slot][0].format(name=person, value="\0").split("\0")
        tokens += before.split()
        if person == people[asked]:
            span = (len(tokens), len(tokens) + len(value.split()) - 1)
        tokens += [*value.split(), *after.split()]
    return [*tokens, SEP], span


@functools.cache
def generate(count: int, facts: int, seed: int) -> TensorDataset:
    """`count` seeded examples: token ids `[count, MAX_TOKENS]` and answer spans `[count, 2]`."""
    rng, words = random.Random(seed), vocabulary()
    ids, spans = torch.zeros(count, MAX_TOKENS, dtype=torch.long), torch.zeros(count, 2, dtype=torch.long)
    for i in range(count):
        tokens, span = example(rng, facts)
        ids[i, : len(tokens)] = torch.tensor([words[token] for token in tokens])
        spans[i] = torch.tensor(span)
    return TensorDataset(ids, spans)


class SpanReader(TinyTransformer):
    """The language model's embeddings and blocks, attending both ways (padding masked), with a head that
    scores each position as the answer's start and end; positions outside the facts (the question, the
    separators, padding) get a logit far below any other."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__(vocab, MAX_TOKENS, dim, layers, heads, dropout, outputs=2)

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        padding = input_ids == vocabulary()[PAD]
        x = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))
        logits = self.head(self.norm(self.blocks(x, src_key_padding_mask=padding))).float()
        separators = (input_ids == vocabulary()[SEP]).cumsum(dim=1)
        facts = (separators == 1) & (input_ids != vocabulary()[SEP])
        logits = logits.masked_fill(~facts[..., None], -1e4)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1], "input_ids": input_ids}


class SpanQATask(Task):
    ModelConfig = LanguageModel  # the same encoder options: dim, layers, heads, dropout
    DataConfig = SpanQAData
    best_metric = "f1"

    def build_model(self) -> nn.Module:
        m = self.model_config
        return SpanReader(len(vocabulary()), m.dim, m.layers, m.heads, m.dropout)

    def _examples(self, split: int) -> TensorDataset:
        d = self.data_config
        count = (d.train_examples, d.eval_examples)[split]
        return generate(count, d.facts, d.corpus_seed * 1000 + split)

    def train_data(self) -> TensorDataset:
        return self._examples(0)

    def eval_data(self) -> TensorDataset:
        return self._examples(1)

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        start = nn.functional.cross_entropy(outputs["start_logits"], targets[:, 0])
        end = nn.functional.cross_entropy(outputs["end_logits"], targets[:, 1])
        return (start + end) / 2

    def build_metrics(self) -> dict[str, Metric]:
        longest, ignored = self.data_config.max_answer_tokens, frozenset(vocabulary()[word] for word in IGNORED)
        return {"exact_match": ExactMatch(longest, ignored), "f1": TokenF1(longest, ignored)}
