"""Deterministic image corruptions in the spirit of CIFAR-10-C (Hendrycks & Dietterich, 2019),
applied to uint8 tensors, for domain-shift experiments on population statistics (Rethinking
BN §2.5: re-estimating statistics on the target domain)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Severity 1..5 -> corruption strength, on images scaled to [0, 1].
_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=generator) * _NOISE_STD[severity - 1]
    return x + noise


def _contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _CONTRAST[severity - 1] + mean


def _brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    return x + _BRIGHTNESS[severity - 1]


CORRUPTIONS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "contrast": _contrast,
    "brightness": _brightness,
}


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """`images` (uint8, N C H W) under corruption `name` at `severity` 1..5, as uint8."""
    if name not in CORRUPTIONS:
        raise ValueError(
            f"unknown corruption '{name}'; valid choices: {', '.join(sorted(CORRUPTIONS))}"
        )
    if severity not in range(1, 6):
        raise ValueError(f"corruption severity must be 1..5, got {severity}")
    generator = torch.Generator().manual_seed(seed)
    out = CORRUPTIONS[name](images.float() / 255.0, severity, generator)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)
