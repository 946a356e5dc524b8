"""Training batches in an order that depends only on (seed, epoch), so a resumed run continues with
exactly the batch the interrupted one would have seen next."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from shared.config import ConfigError
from shared.runtime import seeding


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # batches already consumed in this epoch

    def state_dict(self) -> dict[str, int]:
        return asdict(self)


class ResumableBatches:
    """An endless stream of shuffled training batches (the last incomplete batch of an epoch is dropped).

    Under torchrun each rank takes every `world_size`-th index of the epoch's permutation from its
    `rank` on, as DistributedSampler does, so the ranks see disjoint shards of equal length and the
    epoch's order still depends only on (seed, epoch). `batch_size` is per rank. A `collate_fn` (the
    task's) makes batches of the examples the DataLoader way; without one an in-memory TensorDataset
    is sliced directly.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        position: DataPosition,
        num_workers: int = 0,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise ConfigError(
                f"the task's training data is a stream ({type(dataset).__name__}, an IterableDataset or one without "
                "__len__), which train.py cannot resume at the example it stopped at; return a map-style Dataset "
                "(__len__ and __getitem__), e.g. a datasets.Dataset loaded without streaming=True"
            )
        self.size = len(dataset)
        if batch_size * world_size > self.size:
            raise ConfigError(
                f"data.batch_size: {batch_size} per rank x {world_size} rank(s) must be <= the training set's size "
                f"({self.size}); lower it"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = position
        self.loader_options: dict[str, Any] = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "collate_fn": collate_fn,
        }

    def epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's share of the epoch's shuffled indices, cut to whole batches on every rank."""
        order = torch.randperm(self.size, generator=self.epoch_generator(epoch))
        global_batch = self.batch_size * self.world_size
        return order[: self.size - self.size % global_batch][self.rank :: self.world_size]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return self.epoch_order(epoch).view(-1, self.batch_size).tolist()

    def __iter__(self) -> Iterator[Any]:
        while True:
            if isinstance(self.dataset, TensorDataset) and self.loader_options["collate_fn"] is None:
                yield from self._tensor_batches()
            else:
                yield from self._loader_batches()
            self.position.epoch, self.position.batch = self.position.epoch + 1, 0

    def _tensor_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """In-memory data: whole batches by one index each, on the data's own device (no host sync there)."""
        tensors = self.dataset.tensors
        order = self.epoch_order(self.position.epoch).to(tensors[0].device)
        pin = self.loader_options["pin_memory"] and tensors[0].device.type == "cpu"
        for start in range(self.position.batch * self.batch_size, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            self.position.batch += 1
            yield tuple(t[index].pin_memory() if pin else t[index] for t in tensors)

    def _loader_batches(self) -> Iterator[Any]:
        epoch, first = self.position.epoch, self.position.batch
        remaining: list[Any] = self.epoch_batches(epoch)[first:]
        dataset = self.dataset
        if self.loader_options["num_workers"]:
            dataset = SeededReads(self.dataset)
            remaining = [(self.batch_seed(epoch, first + i), batch) for i, batch in enumerate(remaining)]
        # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise,
        # and the extra loader a resume creates mid-epoch would shift dropout masks after it.
        generator = self.epoch_generator(epoch)
        for batch in DataLoader(dataset, batch_sampler=remaining, generator=generator, **self.loader_options):
            self.position.batch += 1
            yield batch

    def batch_seed(self, epoch: int, batch: int) -> int:
        """The seed a worker reads this rank's batch `batch` of `epoch` under."""
        return int(np.random.SeedSequence([self.seed, epoch, batch, self.rank]).generate_state(1)[0])


class SeededReads(Dataset):
    """A dataset read a batch at a time by `(seed, indices)` keys: each batch's examples are read under the
    Python, NumPy and torch RNGs seeded with its seed. Only in DataLoader workers, whose RNGs are their own."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitems__(self, key: tuple[int, list[int]]) -> list[Any]:
        seed, indices = key
        seeding.seed_everything(seed)
        read_many = getattr(self.dataset, "__getitems__", None)
        return read_many(indices) if read_many else [self.dataset[i] for i in indices]
