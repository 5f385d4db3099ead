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


@register_norm("gn", batch_dependent=False, summary="GroupNorm: per sample over (C/G,H,W)")
def build_gn(
    num_channels: int, *, groups: int | None = 8, group_size: int | None = None, eps: float = 1e-5
) -> GroupNorm:
    """GroupNorm with `groups` groups, or groups of `group_size` channels."""
    return GroupNorm(num_channels, resolve_groups("gn", num_channels, groups, group_size), eps)


@register_norm("ln", batch_dependent=False, summary="LayerNorm (GN paper): per sample over (C,H,W)")
def build_ln(num_channels: int, *, eps: float = 1e-5) -> GroupNorm:
    """LayerNorm of the GN paper: one group, per-channel affine."""
    return GroupNorm(num_channels, 1, eps)


@register_norm(
    "in", batch_dependent=False, summary="InstanceNorm: per sample and channel over (H,W)"
)
def build_in(num_channels: int, *, eps: float = 1e-5) -> GroupNorm:
    """InstanceNorm with affine and no running statistics: GroupNorm with one channel a group."""
    return GroupNorm(num_channels, num_channels, eps)
