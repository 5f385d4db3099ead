"""Sample orders: what k DDP ranks would see in training, served to one process
(VirtualRankSampler), and the one fixed random order every evaluation uses (EvalOrderSampler)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

EVAL_ORDER_SEED = 0  # the same evaluation batches for every run, whatever its own seed


class EvalOrderSampler(Sampler[int]):
    """The evaluation set in one fixed random order (seeded with EVAL_ORDER_SEED, not the run's
    seed), so that batch statistics at inference see randomly composed batches, the same ones
    in every run and epoch. An image folder lists its samples class by class: taken in order,
    every evaluation batch would hold one class. Population statistics do not depend on it."""

    def __init__(self, size: int, seed: int = EVAL_ORDER_SEED) -> None:
        self.order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class VirtualRankSampler(DistributedSampler):
    """Indices for `virtual_devices` ranks of `batch_size` samples per step, in one loader.

    Each virtual rank j of real rank r is DDP rank r * virtual_devices + j of
    num_replicas * virtual_devices ranks and draws exactly the indices torch's
    DistributedSampler (shuffled with seed + epoch, padded to equal shares, as Lightning builds
    it with seed = the run's seed) would give that rank. Step s serves rank 0's batch s, then
    rank 1's batch s, ..., so a loader with batch_size x virtual_devices samples per batch hands
    every layer its ranks' batches as consecutive chunks. Only full steps are served (every rank's
    loader drops its last partial batch). A DistributedSampler, so Lightning does not replace it
    under real DDP.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        virtual_devices: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        ranks = num_replicas * virtual_devices
        super().__init__(dataset, num_replicas=ranks, rank=0, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.virtual_devices = virtual_devices
        self.first_rank = rank * virtual_devices
        self.steps = self.num_samples // batch_size

    def rank_indices(self, rank: int) -> list[int]:
        """What torch's DistributedSampler gives DDP rank `rank` in this epoch."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        padding = self.total_size - n
        if padding > 0:
            indices += (indices * math.ceil(padding / n))[:padding]
        return indices[rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        ranks = range(self.first_rank, self.first_rank + self.virtual_devices)
        shares = [self.rank_indices(r) for r in ranks]
        b = self.batch_size
        for step in range(self.steps):
            for share in shares:
                yield from share[step * b : (step + 1) * b]

    def __len__(self) -> int:
        return self.steps * self.batch_size * self.virtual_devices
