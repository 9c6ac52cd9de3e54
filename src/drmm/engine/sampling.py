"""Reproducible training data order and augmentation, the same with any number of workers or processes."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset


class SeededSamples(Dataset):
    """Runs each sample's augmentation under its own generator seeded by (seed, epoch, index).

    Set ``epoch`` before each epoch; the global torch RNG is left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0] >> 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            return self.dataset[index]


class EpochBatchSampler:
    """Shuffled batches from a (seed, epoch) generator; rank r takes its slice of each global batch.

    With ``world`` processes of ``batch_size`` each, the global batch ``i`` is the
    same ``batch_size * world`` images a single process with that batch size would
    use, so distributed and single-process runs see the same data. The last
    incomplete global batch of an epoch is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.global_batch = batch_size * world
        if n < self.global_batch:
            raise ValueError(f"the training set has {n} images, fewer than one batch ({self.global_batch}); "
                             "pass a smaller --set train.batch_size=N")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate over ``epoch``'s order from its batch ``start_batch`` on (to resume mid-epoch)."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for i in range(self.start, self.n // self.global_batch):
            chunk = order[i * self.global_batch : (i + 1) * self.global_batch]
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
