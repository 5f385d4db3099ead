"""The LightningDataModule that every normlab data set shares."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from normlab.data.corruptions import corrupt
from normlab.data.resumable import ResumableLoader
from normlab.data.samplers import EvalOrderSampler, VirtualRankSampler
from normlab.data.tensors import (
    NormalizeCollate,
    TensorImageDataset,
    channel_stats,
    check_subset_size,
    take_subset,
)


class EpochRandomSampler(RandomSampler):
    """Shuffles with a permutation that depends only on (seed, epoch).

    Lightning calls `set_epoch` before each training epoch, so a resumed run serves epoch e in
    the same order as an uninterrupted one. A RandomSampler subclass, so that under DDP
    Lightning still swaps it for its own per-epoch seeded DistributedSampler.
    """

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        super().__init__(data_source)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of training epoch `epoch`."""
        self.epoch = epoch

    def __iter__(self):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


@dataclass
class LoaderOptions:
    """How batches are served: per-device batch size, virtual devices, workers, seeds."""

    batch_size: int
    virtual_devices: int = 1
    eval_batch_size: int | None = None
    num_workers: int = 0
    train_samples: int | None = None
    val_samples: int | None = None
    holdout_samples: int = 0
    seed: int = 0


class ImageDataModule(L.LightningDataModule):
    """Train/val image sets, shapes the model needs, and loaders (drop_last in training).

    Subclasses implement `load()` returning (train, val) datasets and set `num_classes`,
    `in_channels`, `image_size`.
    """

    name = "base"
    num_classes: int
    in_channels: int
    image_size: int

    def __init__(self, options: LoaderOptions) -> None:
        super().__init__()
        if options.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")
        if options.virtual_devices < 1:
            raise ValueError(f"virtual_devices must be >= 1, got {options.virtual_devices}")
        self.options = options
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.collate = None

    def load(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.load()
            step = self.options.batch_size * self.options.virtual_devices
            if len(self.train_set) < step:  # type: ignore[arg-type]
                what = f"batch_size={self.options.batch_size}" + (
                    f" x virtual_devices={self.options.virtual_devices}"
                    if self.options.virtual_devices > 1
                    else ""
                )
                raise ValueError(
                    f"{what} exceeds the {len(self.train_set)} "  # type: ignore[arg-type]
                    f"training samples of data={self.name}"
                )

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """The training order: (seed, epoch)-seeded shuffling, or with virtual devices what each
        of the emulated DDP ranks would draw (normlab.data.samplers.VirtualRankSampler)."""
        if self.options.virtual_devices == 1:
            return EpochRandomSampler(dataset, self.options.seed)
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        return VirtualRankSampler(
            dataset,
            self.options.batch_size,
            self.options.virtual_devices,
            num_replicas=world,
            rank=rank,
            seed=self.options.seed,
        )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        # The shuffle order comes from the train sampler and the loader's own generator (worker
        # base seeds) never touches the global RNG, which normlab reseeds every epoch for the
        # augmentations: with num_workers=0 a resumed run replays batches exactly.
        # The training loader resumes mid-epoch from a cluster's checkpoint (ResumableLoader).
        loader = ResumableLoader if train else DataLoader
        return loader(
            dataset,
            batch_size=batch_size,
            sampler=self.train_sampler(dataset) if train else EvalOrderSampler(len(dataset)),  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(self.options.seed),
            drop_last=train,  # a batch of one must never reach a BatchNorm
            num_workers=self.options.num_workers,
            persistent_workers=self.options.num_workers > 0,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        step = self.options.batch_size * self.options.virtual_devices
        return self._loader(self.train_set, step, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(
            self.options.eval_batch_size or max(self.options.batch_size, 128)
        )

    def eval_dataloader(self, batch_size: int) -> DataLoader:
        """The validation set in one fixed random order (EvalOrderSampler), in batches of
        `batch_size` (the last one may be smaller): what batch statistics at inference see."""
        self.setup()
        assert self.val_set is not None
        return self._loader(self.val_set, batch_size, train=False)


class InMemoryDataModule(ImageDataModule):
    """A data set small enough to keep decoded as uint8 tensors; augments tensors."""

    pad: int = 4
    flip: bool = True

    def __init__(
        self,
        options: LoaderOptions,
        augment: bool = True,
        corruption: str | None = None,
        severity: int = 3,
    ) -> None:
        super().__init__(options)
        self.augment = augment
        self.corruption = corruption
        self.severity = severity

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train images, train labels, val images, val labels), images uint8 NCHW."""
        raise NotImplementedError

    def load(self) -> tuple[Dataset, Dataset]:
        train_x, train_y, val_x, val_y = self.load_tensors()
        check_subset_size("train_samples", self.options.train_samples, len(train_y), self.name)
        check_subset_size("val_samples", self.options.val_samples, len(val_y), self.name)
        train_x, train_y = take_subset(
            train_x, train_y, self.options.train_samples, self.options.seed
        )
        val_x, val_y = take_subset(val_x, val_y, self.options.val_samples, self.options.seed + 1)
        train_x, train_y, hold_x, hold_y = split_holdout(
            train_x, train_y, self.options.holdout_samples, self.options.seed
        )
        if self.corruption:
            train_x = corrupt(train_x, self.corruption, self.severity, self.options.seed)
            val_x = corrupt(val_x, self.corruption, self.severity, self.options.seed + 1)
            hold_x = corrupt(hold_x, self.corruption, self.severity, self.options.seed + 2)
        self.in_channels = train_x.shape[1]
        self.image_size = train_x.shape[-1]
        mean, std = channel_stats(train_x)
        self.collate = NormalizeCollate(mean, std)
        pad, flip = (self.pad, self.flip) if self.augment else (0, False)
        self.holdout_set = TensorImageDataset(hold_x, hold_y) if len(hold_y) else None
        return TensorImageDataset(train_x, train_y, pad, flip), TensorImageDataset(val_x, val_y)

    def holdout_dataloader(self) -> DataLoader:
        """Training samples kept out of training (data.holdout_samples), unaugmented, for
        choosing inference-time settings such as eval_alpha without touching validation."""
        self.setup()
        if self.holdout_set is None:
            raise ValueError("no held-out split: train with data.holdout_samples=N (N > 0)")
        return self._loader(self.holdout_set, self.options.eval_batch_size or 128, train=False)


def split_holdout(
    images: torch.Tensor, labels: torch.Tensor, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, held-out images, held-out labels): a seeded split."""
    if count < 0 or count >= len(labels):
        raise ValueError(f"data.holdout_samples must be in [0, {len(labels) - 1}], got {count}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 7))
    keep, hold = order[count:], order[:count]
    return images[keep], labels[keep], images[hold], labels[hold]
