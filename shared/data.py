"""Training batches in an order that depends only on (seed, epoch), so a resumed run continues with
exactly the batch the interrupted one would have seen next."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from shared.config import ConfigError


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # batches already consumed in this epoch

    def state_dict(self) -> dict[str, int]:
        return asdict(self)


class ResumableBatches:
    """An endless stream of shuffled training batches (the last incomplete batch of an epoch is dropped)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        position: DataPosition,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.size = len(dataset)  # type: ignore[arg-type]
        if batch_size > self.size:
            raise ConfigError(f"data.batch_size: must be <= the training set's size ({self.size}), got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.position = position
        self.loader_options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}

    def epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(self.size, generator=self.epoch_generator(epoch)).tolist()
        full = self.size - self.size % self.batch_size
        return [order[i : i + self.batch_size] for i in range(0, full, self.batch_size)]

    def __iter__(self) -> Iterator[Any]:
        while True:
            remaining = self.epoch_batches(self.position.epoch)[self.position.batch :]
            # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise,
            # and the extra loader a resume creates mid-epoch would shift dropout masks after it.
            generator = self.epoch_generator(self.position.epoch)
            loader = DataLoader(self.dataset, batch_sampler=remaining, generator=generator, **self.loader_options)
            for batch in loader:
                self.position.batch += 1
                yield batch
            self.position.epoch, self.position.batch = self.position.epoch + 1, 0
