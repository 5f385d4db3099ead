"""`none`: no normalization (the unnormalized baseline of "Understanding BN")."""

from __future__ import annotations

from torch import Tensor

from normlab.norms.base import NormLayer
from normlab.norms.registry import register_norm


class NoNorm(NormLayer):
    """Identity in place of a norm layer; keeps the model's structure for comparison."""

    batch_dependent = False

    def forward(self, x: Tensor) -> Tensor:
        return x

    def zero_init_(self) -> None:
        """Nothing to zero: an unnormalized branch keeps its conv initialization."""


@register_norm("none", summary="no normalization (identity)")
def build_none(num_channels: int) -> NoNorm:
    """No normalization: the unnormalized baseline (Bjorck et al., "Understanding BN", 2018)."""
    return NoNorm()
