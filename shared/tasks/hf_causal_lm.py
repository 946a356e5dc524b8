"""The built-in Hugging Face causal language model (`task: hf_causal_lm`): any transformers causal-LM
architecture, random-init from its config, trained on local text; nothing is downloaded.

- model: a transformers config, as keys of the model section (`model_type: gpt2`, `n_layer: 2`, ...), over a
  local `config.json` when `model.config_file` names one. The vocabulary and special tokens come from the
  tokenizer.
- tokenizer: `data.tokenizer`, a local `tokenizer.json` (or a folder holding one), or else a byte-level BPE
  of `data.vocab_size` trained from the training text with `tokenizers` (deterministic: eval.py trains the
  same one again).
- text: `data.train_files`/`data.eval_files` (text, one document a line; or json, csv, parquet with a
  `data.text_column`), a `DatasetDict` saved by `datasets`' `save_to_disk` (`data.dataset`), or with neither the
  language_model task's generated grammar.

Documents are tokenized, joined with the end-of-text token and cut into windows of `data.context` tokens.
Batches are dicts (`input_ids`, `labels`: the same ids, unshifted, as transformers takes them), so the
Task defaults serve: the dict goes to the model as keyword arguments and its `ModelOutput.loss` is the
loss. best/ holds config.json and the tokenizer files besides: `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load it.

transformers, tokenizers and datasets are the `hf` extra (`pip install -e '.[hf]'`); they are imported
here only, when the task is used.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from shared import config
from shared.errors import ConfigError
from shared.metrics.base import Metric
from shared.metrics.language import HF_IGNORE_INDEX, causal_lm_metrics
from shared.tasks.base import Task
from shared.tasks.language import grammar_text

# This task reads local files only: no library it imports may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

EXTRA = ("transformers", "tokenizers", "datasets")
TOKENIZER_FILE = "tokenizer.json"


class HFCausalLMModel(config.Section):
    """A transformers config: these keys, plus any other the architecture knows (`n_layer`, `hidden_size`...)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, protected_namespaces=())
    model_type: str = Field(
        "gpt2", description="the transformers architecture (gpt2, llama, ...); any other key here is its config's"
    )
    config_file: str | None = Field(
        None, description="a local config.json (or its folder) to start from; the keys here override it"
    )


class HFCausalLMData(config.DataConfig):
    train_files: list[str] = Field(
        default_factory=list, description="training text: paths or glob patterns; none: the generated grammar"
    )
    eval_files: list[str] = Field(default_factory=list, description="held-out text, as train_files")
    format: Literal["text", "json", "csv", "parquet"] = Field(
        "text", description="of the files; text: a document a line, else data.text_column holds it"
    )
    dataset: str | None = Field(None, description="instead of files: a DatasetDict's folder (datasets' save_to_disk)")
    train_split: str = Field("train", description="data.dataset's split for training")
    eval_split: str = Field("validation", description="data.dataset's split for evaluation")
    text_column: str = Field("text", description="the column that holds the text (json, csv, parquet, a dataset)")
    tokenizer: str | None = Field(
        None, description="a local tokenizer.json (or its folder); null: a byte-level BPE trained on the training text"
    )
    vocab_size: int = Field(1024, ge=300, le=config.MAX_COUNT, description="of the trained tokenizer")
    eos_token: str = Field("<|endoftext|>", description="the token that ends each document")
    context: int = Field(128, ge=2, le=1_000_000, description="tokens per example")
    train_chars: int = Field(
        200_000, ge=1000, le=config.MAX_COUNT, description="characters of generated grammar, without files"
    )
    eval_chars: int = Field(20_000, ge=100, le=config.MAX_COUNT, description="held-out generated characters")
    corpus_seed: config.Seed = Field(0, description="seeds the generated grammar")


def require_extra() -> None:
    """One clear line, not an ImportError, when the hf extra is not installed."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"task: hf_causal_lm needs {', '.join(missing)} (the hf extra); install it: pip install -e '.[hf]'"
        )


def _paths(patterns: list[str], key: str) -> list[str]:
    """The files the patterns name, in order; ConfigError for a pattern that names none."""
    found = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise ConfigError(f"{key}: {pattern!r} names no file; give existing paths or glob patterns")
        found += matched
    return found


def texts(data: HFCausalLMData, split: int) -> list[str]:
    """The documents of the training (0) or evaluation (1) text."""
    import datasets

    name = ("train", "eval")[split]
    if data.dataset is not None:
        folder = Path(data.dataset).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"data.dataset: {folder} is not a folder written by datasets' save_to_disk")
        loaded = datasets.load_from_disk(str(folder))
        wanted = (data.train_split, data.eval_split)[split]
        if not isinstance(loaded, datasets.DatasetDict):
            raise ConfigError(
                f"data.dataset: {folder} holds one Dataset; save a DatasetDict with train and eval splits"
            )
        if wanted not in loaded:
            raise ConfigError(f"data.{name}_split: {folder} has no split {wanted!r}; its splits: {', '.join(loaded)}")
        loaded = loaded[wanted]
    elif data.train_files:
        files = _paths((data.train_files, data.eval_files)[split], f"data.{name}_files")
        if not files:
            raise ConfigError("data.eval_files: empty; name the held-out text beside data.train_files")
        loaded = datasets.load_dataset(data.format, data_files=files, split="train")
    else:
        characters = (data.train_chars, data.eval_chars)[split]
        return grammar_text(characters, data.corpus_seed * 1000 + split).split(". ")
    if data.text_column not in loaded.column_names:
        raise ConfigError(
            f"data.text_column: no column {data.text_column!r}; the {name} data's columns: "
            f"{', '.join(loaded.column_names)}"
        )
    return [text for text in loaded[data.text_column] if text]


def load_or_train_tokenizer(data: HFCausalLMData, train_texts: list[str]) -> Any:
    """The `tokenizers.Tokenizer` of data.tokenizer, or a byte-level BPE trained on `train_texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if data.tokenizer is not None:
        path = Path(data.tokenizer).expanduser()
        path = path / TOKENIZER_FILE if path.is_dir() else path
        try:
            loaded = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises its own Exception for a file it cannot read
            raise ConfigError(f"data.tokenizer: cannot read {path} ({err}); give a tokenizer.json") from None
        if loaded.token_to_id(data.eos_token) is None:
            raise ConfigError(f"data.eos_token: {data.eos_token!r} is not in {path}; name its end-of-text token")
        return loaded
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=data.vocab_size,
        special_tokens=[data.eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator(train_texts, trainer)
    return trained


class TokenWindows(Dataset):
    """Consecutive windows of `context` token ids, each an example `{input_ids, attention_mask, labels}`
    (labels: the same ids; every position attended)."""

    def __init__(self, ids: torch.Tensor, context: int) -> None:
        self.windows = ids[: len(ids) // context * context].view(-1, context)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.windows[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


class HFCausalLMTask(Task):
    ModelConfig = HFCausalLMModel
    DataConfig = HFCausalLMData
    best_metric = "perplexity"

    def __init__(self, model: Any, data: Any, seed: int) -> None:
        require_extra()
        super().__init__(model, data, seed)

    @functools.cached_property
    def train_texts(self) -> list[str]:
        return texts(self.data_config, 0)

    @functools.cached_property
    def tokenizer(self) -> Any:
        return load_or_train_tokenizer(self.data_config, self.train_texts)

    def build_model(self) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        options = self.model_config.model_dump(exclude={"model_type", "config_file"})
        vocab = self.tokenizer.get_vocab_size()
        eos = self.tokenizer.token_to_id(self.data_config.eos_token)
        options = {"vocab_size": vocab, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, **options}
        try:
            if self.model_config.config_file is not None:
                hf_config = AutoConfig.from_pretrained(str(Path(self.model_config.config_file).expanduser()), **options)
            else:
                hf_config = AutoConfig.for_model(self.model_config.model_type, **options)
        except (OSError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0]
            raise ConfigError(
                f"model: not a transformers config ({reason}); check model.model_type or model.config_file"
            ) from None
        if hf_config.vocab_size < vocab:
            raise ConfigError(f"model.vocab_size: {hf_config.vocab_size} is below the tokenizer's {vocab} tokens")
        positions = getattr(hf_config, "max_position_embeddings", None)
        if positions is not None and positions < self.data_config.context:
            raise ConfigError(
                f"data.context: {self.data_config.context} tokens, but the model holds {positions} positions; "
                "lower data.context or raise the model's"
            )
        try:
            return AutoModelForCausalLM.from_config(hf_config)
        except ValueError as err:  # a config of an architecture that is no causal LM
            raise ConfigError(f"model: {hf_config.model_type} is no causal LM in transformers ({err})") from None

    def _windows(self, split: int) -> TokenWindows:
        data, name = self.data_config, ("train", "eval")[split]
        documents = self.train_texts if split == 0 else texts(data, split)
        eos = self.tokenizer.token_to_id(data.eos_token)
        ids = [token for encoding in self.tokenizer.encode_batch(documents) for token in (*encoding.ids, eos)]
        windows = TokenWindows(torch.tensor(ids, dtype=torch.long), data.context)
        if not len(windows):
            raise ConfigError(f"data.context: {data.context} tokens is more than the {name} text's {len(ids)}")
        return windows

    def train_data(self) -> TokenWindows:
        return self._windows(0)

    def eval_data(self) -> TokenWindows:
        return self._windows(1)

    def build_metrics(self) -> dict[str, Metric]:
        return causal_lm_metrics()

    def tokens(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return (targets != HF_IGNORE_INDEX).sum()

    def export_files(self, model: nn.Module, folder: Path) -> None:
        from transformers import PreTrainedTokenizerFast

        super().export_files(model, folder)
        eos = self.data_config.eos_token
        wrapped = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer, eos_token=eos, bos_token=eos, pad_token=eos)
        wrapped.save_pretrained(str(folder))
