"""Group, Layer and Instance Normalization for conv nets (Wu & He, ECCV 2018).

Per-sample statistics (biased) over groups of channels and all positions; per-channel
affine; identical in training and evaluation. LN here is the LN of the GN paper
(statistics over C, H, W), not timm's channels-only LayerNorm2d.
"""

from __future__ import annotations

from torch import nn

from normlab.norms.base import NormLayer
from normlab.norms.registry import register_norm


class GroupNorm(nn.GroupNorm, NormLayer):
    """torch's GroupNorm with the channel count first, batch-independent."""

    batch_dependent = False

    def __init__(self, num_channels: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__(num_groups=num_groups, num_channels=num_channels, eps=eps)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_groups(name: str, num_channels: int, groups: int | None, group_size: int | None) -> int:
    """Number of groups from `groups` or `group_size`, which must divide the channel count."""
    if (groups is None) == (group_size is None):
        raise ValueError(f"{name}: set exactly one of groups or group_size (the other to null)")
    choices = ", ".join(map(str, _divisors(num_channels)))
    if group_size is not None:
        if group_size < 1 or num_channels % group_size:
            raise ValueError(
                f"{name}: group_size={group_size} does not divide num_channels={num_channels}; "
                f"valid group sizes: {choices}"
            )
        return num_channels // group_size
    assert groups is not None
    if groups < 1 or num_channels % groups:
        raise ValueError(
            f"{name}: groups={groups} does not divide num_channels={num_channels}; "
            f"valid groups: {choices} (or set group_size)"
        )
    return groups


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
