"""Batching: a deterministic infinite training sampler, aspect-ratio grouping, an inference sampler, and collate."""

from __future__ import annotations

import itertools
import os
from typing import Iterator, Sequence

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


class GroupedBatchSampler(Sampler):
    """Batches of ``batch_size`` from a ``TrainingSampler`` stream, each batch drawn from one group only.

    With ``group_ids`` = 0 for landscape (w >= h) and 1 for portrait images this is detectron2's aspect-ratio grouping:
    a batch pads its images to a common size, and mixing orientations would pad most of it with zeros. Items go to
    their group's bucket in stream order; a full bucket is the next batch. Batch ``i`` is a function of the stream
    alone, so ``start_batch`` replays the grouping of the first batches (indices only, nothing is loaded) and a
    resumed run continues with exactly the batches it would have seen.
    """

    def __init__(self, sampler: TrainingSampler, *, group_ids: Sequence[int], batch_size: int,
                 start_batch: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sampler.start:
            raise ValueError("give the grouped sampler a stream from position 0; start_batch positions it")
        if len(group_ids) != sampler.size:
            raise ValueError(f"{len(group_ids)} group ids for a dataset of {sampler.size} images")
        self.sampler, self.group_ids, self.batch_size, self.start_batch = sampler, list(group_ids), batch_size, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list] = {}
        made = 0
        for item in self.sampler:
            bucket = buckets.setdefault(self.group_ids[item[0]], [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                if made >= self.start_batch:
                    yield list(bucket)
                made += 1
                bucket.clear()


def aspect_ratio_groups(dataset: Dataset) -> list[int]:
    """0 for images with width >= height, 1 for the others, from ``dataset.records`` (``width``, ``height``).

    Resizing keeps the aspect ratio and flipping keeps the orientation, so the original size decides the group.
    """
    records = getattr(dataset, "records", None)
    if records is None:
        raise TypeError(f"aspect-ratio grouping needs a dataset with .records holding width and height (e.g. "
                        f"CocoInstances), got {type(dataset).__name__}; pass aspect_ratio_grouping=False")
    return [int(r["width"] < r["height"]) for r in records]


def default_num_workers(device: str | torch.device, *, processes_per_machine: int = 1) -> int:
    """Data-loading processes per training process: 0 on the CPU, min(4, free cores) on CUDA.

    On the CPU the model's step already runs on every core and takes seconds, while loading an image (decode, resize,
    rasterise its polygons) takes milliseconds: a worker would only compete for the same cores. A GPU step of the
    R-50 model takes a fraction of a second, about what loading a batch of COCO images takes in one process, so on
    CUDA loading moves to up to 4 workers (detectron2's default), fewer when the cores are shared by several GPUs.
    """
    if torch.device(device).type != "cuda":
        return 0
    return max(1, min(4, available_cores() // max(processes_per_machine, 1) - 1))


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    num_workers: int = 0, aspect_ratio_grouping: bool = True, pin_memory: bool = False,
) -> Iterator[tuple[list, list]]:
    """Endless iterator of ``(images, targets)`` batches of ``batch_size`` for this process from ``start_iter`` on.

    Args:
        num_workers: data-loading processes (0: load in this process). The batches are the same for any number:
            the sampler fixes every batch's items and augmentation seeds.
        aspect_ratio_grouping: batch landscape and portrait images separately (see ``GroupedBatchSampler``).
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
    """
    sampler = TrainingSampler(size=len(dataset), seed=seed, rank=rank, world_size=world_size)
    groups = aspect_ratio_groups(dataset) if aspect_ratio_grouping else [0] * len(dataset)
    batches = GroupedBatchSampler(sampler, group_ids=groups, batch_size=batch_size, start_batch=start_iter)
    # A private generator: DataLoader draws a base seed when iterated, which must not shift the global RNG stream
    # (a resumed run restores that stream and then builds its loader).
    return iter(DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                           persistent_workers=num_workers > 0, pin_memory=pin_memory,
                           generator=torch.Generator().manual_seed(seed)))


def inference_loader(dataset: Dataset, *, batch_size: int = 1, rank: int = 0, world_size: int = 1,
                     num_workers: int = 0) -> DataLoader:
    """One pass over this process' share of ``dataset`` in order."""
    sampler = InferenceSampler(size=len(dataset), rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers)
