"""Random images and labels: for throughput measurements only (nothing to learn)."""

from __future__ import annotations

import torch

from normlab.data.base import InMemoryDataModule, LoaderOptions


class SyntheticDataModule(InMemoryDataModule):
    """Seeded random uint8 images with random labels."""

    name = "synthetic"

    def __init__(
        self,
        options: LoaderOptions,
        num_samples: int = 2048,
        num_classes: int = 10,
        image_size: int = 32,
        channels: int = 3,
    ) -> None:
        super().__init__(options, augment=False)
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.shape = (channels, image_size, image_size)

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.options.seed)
        n_val = max(1, self.num_samples // 8)
        x = torch.randint(
            0, 256, (self.num_samples + n_val, *self.shape), generator=g, dtype=torch.uint8
        )
        y = torch.randint(0, self.num_classes, (self.num_samples + n_val,), generator=g)
        return (
            x[: self.num_samples],
            y[: self.num_samples],
            x[self.num_samples :],
            y[self.num_samples :],
        )
