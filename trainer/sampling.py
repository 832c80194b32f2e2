"""Which images each step trains on: a pure function of (seed, epoch, rank), so any step can be re-entered.

A resumed run at step s continues in epoch s // batches_per_epoch at batch s % batches_per_epoch, without
loading the images it skips; under DistributedDataParallel each rank takes its own disjoint share of
every epoch's permutation. Batches are lists of (epoch, index) keys: trainer/augment.py seeds each
sample's augmentation from its key, so where and in which process a sample is loaded changes nothing.

With `groups` (a group id per image: landscape or portrait for the R-CNNs), a batch holds images of one
group where it can, as torchvision's detection reference trainer does (GroupedBatchSampler): the R-CNNs
pad a batch to its widest and tallest image, and on the shapes data mixed batches are 1.8x the pixels
their images hold, grouped ones 1.3x.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data import collate


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields the batches of one epoch (from `set_position`'s offset on) as lists of (epoch, index) keys."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[int] | None = None,
    ) -> None:
        if groups is not None and len(groups) != size:
            raise ValueError(f"{len(groups)} group ids for {size} images")
        self.groups = list(groups) if groups is not None else None
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.offset = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{size} training images cannot fill one batch of {batch_size} per process "
                f"({world_size} processes); lower --batch-size"
            )

    @property
    def batches_per_epoch(self) -> int:
        # Every rank takes the same number of whole batches (DDP steps in lockstep); the remainder waits
        # for the next epoch's permutation.
        return self.size // self.world_size // self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        if self.groups is None:
            return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        return self._grouped(mine, generator)

    def _grouped(self, mine: list[int], generator: torch.Generator) -> list[list[int]]:
        """The same images in as many batches, each of one group but the last few (the groups' remainders)."""
        assert self.groups is not None
        by_group: dict[int, list[int]] = {}
        for index in mine:
            by_group.setdefault(self.groups[index], []).append(index)
        batches, rest = [], []
        for members in by_group.values():
            whole = len(members) // self.batch_size * self.batch_size
            batches += [members[i : i + self.batch_size] for i in range(0, whole, self.batch_size)]
            rest += members[whole:]
        batches += [rest[i : i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def set_position(self, epoch: int, offset: int = 0) -> None:
        self.epoch, self.offset = epoch, offset

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.epoch_batches(self.epoch)[self.offset :]:
            yield [(self.epoch, index) for index in batch]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.offset


def batch_stream(
    dataset: Dataset[Any], sampler: EpochBatchSampler, start_step: int = 0, workers: int = 0
) -> Iterator[Any]:
    """Endless (images, targets) batches, the first being the one optimizer step `start_step` trains on;
    `workers` processes load and augment them ahead of the training loop (0: in this process)."""
    # A private generator: the DataLoader draws a worker base seed from it on every epoch, which would
    # otherwise consume the global torch RNG and shift the run's randomness depending on where it resumed.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator(),
                        num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=2 if workers else None)  # fmt: skip
    epoch, offset = divmod(start_step, sampler.batches_per_epoch)
    while True:
        sampler.set_position(epoch, offset)
        yield from loader
        epoch, offset = epoch + 1, 0
