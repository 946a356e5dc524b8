# lines_task.py
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from shared.config import DataConfig, Section
from shared.metrics.language import Perplexity, TokenAccuracy
from shared.tasks import Task

PAD = 0  # byte 0 never occurs in the text: it pads a batch's shorter lines
WORDS = ["the", "red", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far", "away"]


class LinesModel(Section):
    hidden: int = Field(64, ge=1, le=4096)


class LinesData(DataConfig):
    lines: int = Field(400, ge=10, le=1_000_000)


class Lines(Dataset):
    """Each line as bytes: its inputs are all bytes but the last, its targets all but the first."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [torch.tensor(list(line.encode())) for line in lines]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lines[index][:-1], self.lines[index][1:]


class ByteGRU(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


class LinesTask(Task):
    """Next-byte prediction over seeded sentences of 2 to 8 words."""

    ModelConfig = LinesModel
    DataConfig = LinesData
    best_metric = "perplexity"  # chooses best/ and is what early stopping watches

    def build_model(self) -> nn.Module:
        return ByteGRU(self.model_config.hidden)

    def _lines(self, split: int) -> Lines:
        generator = torch.Generator().manual_seed(self.seed * 10 + split)
        lengths = torch.randint(2, 9, (self.data_config.lines,), generator=generator).tolist()
        words = [torch.randint(len(WORDS), (n,), generator=generator).tolist() for n in lengths]
        return Lines([" ".join(WORDS[i] for i in line) + "." for line in words])

    def train_data(self) -> Dataset:
        return self._lines(split=0)

    def eval_data(self) -> Dataset:
        return self._lines(split=1)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = nn.utils.rnn.pad_sequence([i for i, _ in items], batch_first=True, padding_value=PAD)
        targets = nn.utils.rnn.pad_sequence([t for _, t in items], batch_first=True, padding_value=PAD)
        return inputs, targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.flatten(0, 1), targets.flatten(), ignore_index=PAD)

    def build_metrics(self) -> dict:
        return {"perplexity": Perplexity(ignore_index=PAD), "token_accuracy": TokenAccuracy(ignore_index=PAD)}

    def tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (targets != PAD).sum()  # a tensor: counted on the device, without a host sync
