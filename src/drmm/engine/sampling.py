"""Reproducible training data order and augmentation, the same with any number of workers or processes."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset


class SeededSamples(Dataset):
    """Runs each sample's augmentation under its own generator seeded by (seed, epoch, index).

    The key is an index (of epoch ``self.epoch``) or an ``(epoch, index)`` pair, as
    :class:`TaggedBatches` yields them, so workers kept alive across epochs
    (``persistent_workers``) need no update. The global torch RNG is left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        s = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a lazy seeding of every
            # accelerator backend, each recording a formatted stack (about 1 ms a sample on a CPU)
            torch.default_generator.manual_seed(s)
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


class TaggedBatches:
    """The batches of an :class:`EpochBatchSampler` as ``(epoch, index)`` pairs for :class:`SeededSamples`.

    The sampler runs in the main process, so one DataLoader (with persistent
    workers) serves every epoch: ``sampler.set_epoch`` moves it.
    """

    def __init__(self, sampler: EpochBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, i) for i in batch]


def loader_workers(requested: int | None, device: torch.device) -> int:
    """``requested``, or by default min(8, this process's share of the CPU cores) on a GPU and 2 on the CPU."""
    if requested is not None:
        return requested
    if device.type == "cpu":
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
