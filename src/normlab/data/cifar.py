"""CIFAR-10/100 in torchvision's format under `root` (downloaded when allowed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from normlab.data.base import InMemoryDataModule, LoaderOptions


class CifarDataModule(InMemoryDataModule):
    """CIFAR with the standard augmentation: 4-pixel padded random crops and flips."""

    def __init__(
        self,
        options: LoaderOptions,
        root: str,
        classes: int = 10,
        download: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(options, augment)
        if classes not in (10, 100):
            raise ValueError(f"CIFAR has 10 or 100 classes, got {classes}")
        self.name = f"cifar{classes}"
        self.num_classes = classes
        self.root = Path(root)
        self.download = download

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cls = CIFAR10 if self.num_classes == 10 else CIFAR100
        try:
            train = cls(str(self.root), train=True, download=self.download)
            val = cls(str(self.root), train=False, download=self.download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{self.name} not found under data.root={self.root} ({error}). Set data.download=true "
                "(needs network), point data.root at the folder holding torchvision's files, or use "
                "the JPEG copy offline: `make data` then data=folder data.root=.cache/data/cifar10"
            ) from None
        return _to_tensors(train.data, train.targets) + _to_tensors(val.data, val.targets)


def _to_tensors(data: np.ndarray, targets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), torch.tensor(targets)
