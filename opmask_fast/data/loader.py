"""Batching: a deterministic infinite training sampler, an inference sampler, and the collate function."""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class TrainingSampler(Sampler):
    """Endless stream of ``(index, augmentation_seed)`` for one process of ``world_size``.

    Epoch ``e`` is a permutation drawn from ``seed + e``; position ``p`` of the global stream goes to rank
    ``p % world_size``. Both the order and the per-sample augmentation seed are functions of ``(seed, position)`` only,
    so a run resumed at iteration ``i`` (``start = i * batch_size_per_rank``) sees exactly the samples and flips it
    would have seen without the interruption, whatever the number of data-loading workers.
    """

    def __init__(self, *, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("the training dataset is empty (no image with a usable instance)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.rank, self.world_size, self.start = size, seed, rank, world_size, start

    def _global(self) -> Iterator[tuple[int, int]]:
        for epoch in itertools.count():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            for pos, idx in enumerate(torch.randperm(self.size, generator=g).tolist()):
                yield idx, (self.seed * 1_000_003 + epoch) * 1_000_033 + pos

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = itertools.islice(self._global(), self.rank, None, self.world_size)
        return itertools.islice(stream, self.start, None)


class InferenceSampler(Sampler):
    """The indices ``rank, rank + world_size, ...`` once each, in order."""

    def __init__(self, *, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate(batch: list) -> tuple[list, list]:
    """Keeps images of different sizes as a list (the model pads and batches them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def train_loader(
    dataset: Dataset, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_iter: int = 0,
    num_workers: int = 0,
) -> Iterator[tuple[list, list]]:
    """Endless iterator of ``(images, targets)`` batches of ``batch_size`` for this process from ``start_iter`` on."""
    sampler = TrainingSampler(size=len(dataset), seed=seed, rank=rank, world_size=world_size,
                              start=start_iter * batch_size)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True)
    # A private generator: DataLoader draws a base seed when iterated, which must not shift the global RNG stream
    # (a resumed run restores that stream and then builds its loader).
    return iter(DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                           persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed)))


def inference_loader(dataset: Dataset, *, batch_size: int = 1, rank: int = 0, world_size: int = 1,
                     num_workers: int = 0) -> DataLoader:
    """One pass over this process' share of ``dataset`` in order."""
    sampler = InferenceSampler(size=len(dataset), rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers)
