"""In-memory uint8 image sets with cheap tensor augmentation (random crop, flip)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """uint8 images (N, C, H, W) with integer labels; random crop with padding and flips."""

    def __init__(self, images: Tensor, labels: Tensor, pad: int = 0, flip: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.size = images.shape[-1]
        self.pad = pad
        self.flip = flip
        self.images = F.pad(images, (pad, pad, pad, pad)) if pad else images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        if self.pad:
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            image = image[:, top : top + self.size, left : left + self.size]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


class NormalizeCollate:
    """Stack uint8 samples and turn them into normalized float32 batches."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, samples: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        images = torch.stack([s[0] for s in samples]).float().div_(255.0)
        labels = torch.stack([s[1] for s in samples])
        return (images - self.mean) / self.std, labels


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255.0)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def take_subset(
    images: Tensor, labels: Tensor, count: int | None, seed: int
) -> tuple[Tensor, Tensor]:
    """A seeded random subset of `count` samples (all of them when count is None)."""
    if count is None or count >= len(labels):
        return images, labels
    if count < 1:
        raise ValueError(f"subset size must be positive, got {count}")
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count]
    return images[index], labels[index]


def check_subset_size(key: str, count: int | None, available: int, data_name: str) -> None:
    """Refuse `data.<key>` larger than the `available` samples (it would silently mean all)."""
    if count is not None and count > available:
        raise ValueError(
            f"data.{key}={count} exceeds the {available} samples of data={data_name}; "
            f"use at most {available}, or null for all of them"
        )
