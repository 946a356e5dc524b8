"""A Hugging Face GPT-2 whose output layer is its input embedding (tied weights), random-init from a tiny
GPT2Config (nothing downloaded), over random token windows: for the tests of shared storage in every file."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from shared.config import DataConfig, Section
from shared.tasks import Task


class TinyGPT2(Section):
    layers: int = Field(2, ge=1, le=48)
    dim: int = Field(32, ge=8, le=4096)
    heads: int = Field(2, ge=1, le=64)
    vocab: int = Field(512, ge=2, le=100_000)
    context: int = Field(16, ge=2, le=4096)


class TokenWindows(DataConfig):
    examples: int = Field(256, ge=4, le=1_000_000)


class TiedGPT2Task(Task):
    """Next-token prediction over random tokens with transformers' GPT2LMHeadModel."""

    ModelConfig = TinyGPT2
    DataConfig = TokenWindows

    def build_model(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        options = self.model_config
        config = GPT2Config(
            n_layer=options.layers,
            n_embd=options.dim,
            n_head=options.heads,
            vocab_size=options.vocab,
            n_positions=options.context,
            bos_token_id=0,
            eos_token_id=0,
            tie_word_embeddings=True,
        )
        return GPT2LMHeadModel(config)

    def _windows(self, split: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(self.seed * 10 + split)
        shape = (self.data_config.examples, self.model_config.context + 1)
        tokens = torch.randint(self.model_config.vocab, shape, generator=generator)
        return TensorDataset(tokens[:, :-1], tokens[:, 1:])

    def train_data(self) -> TensorDataset:
        return self._windows(split=0)

    def eval_data(self) -> TensorDataset:
        return self._windows(split=1)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(input_ids=inputs).logits

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.flatten(0, 1), targets.flatten())
