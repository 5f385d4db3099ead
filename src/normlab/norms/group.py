"""Group, Layer and Instance Normalization for conv nets (Wu & He, ECCV 2018).

Per-sample statistics (biased) over groups of channels and all positions; per-channel
affine; identical in training and evaluation. LN here is the LN of the GN paper
(statistics over C, H, W), not timm's channels-only LayerNorm2d.
"""

from __future__ import annotations

from torch import nn

from normlab.norms.base import NormLayer
from normlab.norms.checks import resolve_groups
from normlab.norms.registry import register_norm


class GroupNorm(nn.GroupNorm, NormLayer):
    """torch's GroupNorm with the channel count first, batch-independent."""

    batch_dependent = False

    def __init__(self, num_channels: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__(num_groups=num_groups, num_channels=num_channels, eps=eps)


@register_norm(
    "gn", summary="GroupNorm (Wu & He 2018): per sample over (C/G,H,W)", test_params={"groups": 2}
)
def build_gn(
    num_channels: int, *, groups: int | None = 8, group_size: int | None = None, eps: float = 1e-5
) -> GroupNorm:
    """Group Normalization (Wu & He, ECCV 2018): per-sample statistics over (C/G,H,W). The paper
    uses G=32 on ImageNet ResNet-50; CIFAR ResNet-20 has 16-channel layers, so the default here
    is G=8. Set exactly one of groups / group_size (channels per group)."""
    return GroupNorm(num_channels, resolve_groups("gn", num_channels, groups, group_size), eps)


@register_norm("ln", summary="LayerNorm of the GN paper: over (C,H,W) per sample")
def build_ln(num_channels: int, *, eps: float = 1e-5) -> GroupNorm:
    """Layer Normalization as in the GN paper (Wu & He, 2018): per-sample statistics over
    (C,H,W), per-channel affine. (Not timm's LayerNorm2d, which normalizes over C at each
    position.)"""
    return GroupNorm(num_channels, 1, eps)


@register_norm("in", summary="InstanceNorm: over (H,W) per sample and channel")
def build_in(num_channels: int, *, eps: float = 1e-5) -> GroupNorm:
    """Instance Normalization (Ulyanov et al., 2016) as GN with one channel per group:
    statistics over (H,W) per sample and channel; per-channel affine; no running statistics."""
    return GroupNorm(num_channels, num_channels, eps)
