"""The built-in language model: a small byte-level transformer that predicts the next token of a text
the repository generates (no download).

`data.corpus: grammar` writes English-like sentences from a small seeded grammar (a few dozen words,
agreement, punctuation), read as bytes (a vocabulary of 256): a model that learns the words and their
order beats the unigram baseline (each byte's frequency alone) by far, in about 30 s of training on 2
CPU cores.
`data.corpus: markov` draws token ids from a seeded sparse Markov chain over `data.vocab_size` tokens,
for large-vocabulary work (memory of the evaluator with 32k logits per position, say).

Batches are `(tokens [batch, context], next tokens [batch, context])`; the metrics are perplexity and
token accuracy, both streamed, and train.py reports tokens per second.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from shared import config
from shared.metrics.base import Metric
from shared.metrics.language import Perplexity, TokenAccuracy
from shared.tasks.base import Task

BYTES = 256


class LanguageModel(config.Section):
    dim: int = Field(64, ge=8, le=65_536, description="the transformer's width; a multiple of heads")
    layers: int = Field(2, ge=1, le=1024, description="transformer blocks")
    heads: int = Field(4, ge=1, le=1024, description="attention heads per block")
    dropout: config.Fraction = Field(0.0, description="dropout in every block, in training only")


class LanguageData(config.DataConfig):
    corpus: Literal["grammar", "markov"] = Field(
        "grammar", description="grammar: English-like sentences as bytes; markov: a seeded Markov chain of token ids"
    )
    context: int = Field(64, ge=2, le=1_000_000, description="tokens per example")
    train_tokens: int = Field(200_000, ge=1000, le=config.MAX_COUNT, description="tokens generated for training")
    eval_tokens: int = Field(20_000, ge=100, le=config.MAX_COUNT, description="tokens generated for evaluation")
    vocab_size: int = Field(32_768, ge=2, le=config.MAX_COUNT, description="markov only; grammar is bytes")
    corpus_seed: config.Seed = Field(0, description="seeds the generated corpus")


NOUNS = ["cat", "dog", "bird", "child", "teacher", "farmer", "river", "city", "garden", "window", "letter", "song"]
VERBS = ["sees", "finds", "likes", "follows", "paints", "visits", "hears", "remembers", "carries", "watches"]
ADJECTIVES = ["small", "old", "quiet", "bright", "green", "happy", "tired", "distant", "warm", "strange"]
PLACES = ["near the river", "in the garden", "after the rain", "every morning", "at night", "by the window"]


def _phrase(rng: random.Random) -> str:
    words = [rng.choice(["the", "a", "one", "every"])]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    return " ".join([*words, rng.choice(NOUNS)])


def grammar_text(characters: int, seed: int) -> str:
    """At least `characters` of seeded sentences: phrase, verb, phrase, sometimes a place and a second clause."""
    rng, sentences, size = random.Random(seed), [], 0
    while size < characters:
        sentence = f"{_phrase(rng)} {rng.choice(VERBS)} {_phrase(rng)}"
        if rng.random() < 0.4:
            sentence += f" {rng.choice(PLACES)}"
        if rng.random() < 0.3:
            sentence += f", and {_phrase(rng)} {rng.choice(VERBS)} it"
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?"]) + " "
        sentences.append(sentence)
        size += len(sentence)
    return "".join(sentences)


def markov_tokens(count: int, vocab_size: int, seed: int, stream: int) -> np.ndarray:
    """`count` token ids from a sparse Markov chain: each token is followed by one of 4 tokens of its own,
    with fixed probabilities. The chain depends on `seed`; `stream` picks an independent walk through it."""
    chain = np.random.default_rng(seed)
    successors = chain.integers(0, vocab_size, size=(vocab_size, 4))
    walk = np.random.default_rng([seed, stream])
    picks = walk.choice(4, size=count, p=[0.5, 0.25, 0.15, 0.1])
    tokens = np.empty(count, dtype=np.int64)
    token = int(walk.integers(vocab_size))
    for i in range(count):
        tokens[i] = token
        token = int(successors[token, picks[i]])
    return tokens


@functools.cache
def corpus(corpus_name: str, tokens: int, vocab_size: int, seed: int, stream: int) -> torch.Tensor:
    """A 1-d tensor of token ids; stream 0 is the training text, 1 the held-out text."""
    if corpus_name == "markov":
        return torch.from_numpy(markov_tokens(tokens, vocab_size, seed, stream))
    text = grammar_text(tokens, seed * 1000 + stream)
    return torch.frombuffer(bytearray(text.encode()[:tokens]), dtype=torch.uint8).long()


def windows(stream: torch.Tensor, context: int) -> TensorDataset:
    """Non-overlapping examples of `context` tokens, each with the `context` tokens that follow one step on."""
    count = (len(stream) - 1) // context
    inputs = stream[: count * context].view(count, context)
    targets = stream[1 : count * context + 1].view(count, context)
    return TensorDataset(inputs, targets)


class TinyTransformer(nn.Module):
    """A decoder-only transformer: token and position embeddings, pre-norm causal blocks, a linear head (to
    the vocabulary, or to `outputs` values per position)."""

    def __init__(
        self, vocab: int, context: int, dim: int, layers: int, heads: int, dropout: float, outputs: int | None = None
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, outputs or vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.tokens(tokens) + self.positions(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


class LanguageModelTask(Task):
    ModelConfig = LanguageModel
    DataConfig = LanguageData
    best_metric = "perplexity"

    @property
    def vocab_size(self) -> int:
        return self.data_config.vocab_size if self.data_config.corpus == "markov" else BYTES

    def _stream(self, stream: int) -> torch.Tensor:
        d = self.data_config
        tokens = d.train_tokens if stream == 0 else d.eval_tokens
        return corpus(d.corpus, tokens, self.vocab_size, d.corpus_seed, stream)

    def build_model(self) -> nn.Module:
        m = self.model_config
        return TinyTransformer(self.vocab_size, self.data_config.context, m.dim, m.layers, m.heads, m.dropout)

    def train_data(self) -> TensorDataset:
        return windows(self._stream(0), self.data_config.context)

    def eval_data(self) -> TensorDataset:
        return windows(self._stream(1), self.data_config.context)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.flatten(0, -2), targets.flatten())

    def build_metrics(self) -> dict[str, Metric]:
        return {"perplexity": Perplexity(), "token_accuracy": TokenAccuracy()}

    def tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> int:
        return targets.numel()

    def unigram_perplexity(self) -> float:
        """The baseline: the held-out text's perplexity under the training text's token frequencies
        (add-one smoothed), which any model that learned something about order must beat."""
        counts = torch.bincount(self._stream(0), minlength=self.vocab_size).double() + 1
        log_p = (counts / counts.sum()).log()
        return math.exp(-float(log_p[windows(self._stream(1), self.data_config.context).tensors[1]].mean()))
