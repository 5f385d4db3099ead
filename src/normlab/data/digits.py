"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images): the offline default."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from normlab.data.base import InMemoryDataModule, LoaderOptions


class DigitsDataModule(InMemoryDataModule):
    """Digits upsampled to `image_size`, one channel, a stratified train/val split."""

    name = "digits"
    num_classes = 10
    flip = False  # a mirrored digit is another symbol

    def __init__(
        self,
        options: LoaderOptions,
        image_size: int = 16,
        val_fraction: float = 0.2,
        augment: bool = True,
    ) -> None:
        super().__init__(options, augment)
        if image_size < 8:
            raise ValueError(f"digits image_size must be >= 8, got {image_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.target_size = image_size
        self.val_fraction = val_fraction
        self.pad = max(1, image_size // 8)

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
        images = F.interpolate(images, size=self.target_size, mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        labels = torch.from_numpy(digits.target)
        train_idx, val_idx = train_test_split(
            torch.arange(len(labels)).numpy(),
            test_size=self.val_fraction,
            stratify=labels.numpy(),
            random_state=0,
        )
        train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]
