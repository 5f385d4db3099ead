"""EvoNorm-S0 (Liu, Brock, Simonyan & Le, NeurIPS 2020; docs/methods.md, "evonorm_s0"): a
normalization-activation layer found by search, batch-independent:

    y = x * sigmoid(v * x) / sqrt(groupvar(x) + eps) * gamma + beta,

with groupvar the biased variance over (C/G, H, W) per sample of the un-gated x and v
initialised to 1. The layer is itself the activation. Where no activation follows (the last
norm of a residual branch) it keeps the normalization and drops the gate (timm's "S0a"
behaviour), instead of degenerating to an affine map as timm's plain S0 does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.norms._fast import var_mean
from normlab.norms.base import NormLayer
from normlab.norms.checks import check_eps, resolve_groups
from normlab.norms.registry import register_norm


def group_std(x: Tensor, groups: int, eps: float) -> Tensor:
    """sqrt(biased variance + eps) over each sample's channel groups, broadcast to x's shape."""
    n, c, h, w = x.shape
    grouped = x.reshape(n, groups, -1)
    var = grouped.var(dim=2, unbiased=False, keepdim=True)
    std = (var + eps).sqrt().expand(n, groups, (c // groups) * h * w)
    return std.reshape(n, c, h, w)


class EvoNormS0(NormLayer):
    """EvoNorm-S0; `gated=False` (no activation follows) divides by the group std only."""

    batch_dependent = False
    fuses_activation = True

    def __init__(self, num_channels: int, groups: int, gated: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.gated = gated
        self._init_affine(num_channels)
        self.v = nn.Parameter(torch.ones(num_channels)) if gated else None

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.groups}, gated={self.gated}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        """Group variance by sums with a one-pass backward (normlab.norms._fast); 1/std and gamma
        folded into one per-(sample, channel) scale, so the normalization is one multiply."""
        if torch.compiler.is_compiling():
            return self._reference_forward(x)  # inductor fuses the plain formula best
        n, c = x.shape[:2]
        g = self.groups
        var, _ = var_mean(x.reshape(n, g, -1), (2,))
        inv = torch.rsqrt(var + self.eps).view(n, g, 1) * self.weight.view(1, g, c // g)
        scale = inv.reshape(n, c, 1, 1).to(x.dtype)
        if self.v is None:
            return (x * scale).add_(self.bias.view(1, -1, 1, 1))
        gate = torch.sigmoid_(x * self.v.view(1, -1, 1, 1))
        # not mul_(gate): an in-place product saves a copy of its input for the backward.
        return (x * scale * gate).add_(self.bias.view(1, -1, 1, 1))

    def _reference_forward(self, x: Tensor) -> Tensor:
        """The formula written out (the tests compare `forward` with it)."""
        shape = (1, -1, 1, 1)
        numerator = x * torch.sigmoid(self.v.view(shape) * x) if self.v is not None else x
        out = numerator / group_std(x, self.groups, self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape)


@register_norm(
    "evonorm_s0",
    summary="EvoNorm-S0 (Liu et al. 2020), replaces norm + activation",
    test_params={"groups": 2},
)
def build_evonorm_s0(
    num_channels: int,
    *,
    activation: str | None = None,
    groups: int | None = 8,
    group_size: int | None = None,
    eps: float = 1e-5,
) -> EvoNormS0:
    """EvoNorm-S0 (Liu et al., NeurIPS 2020): x*sigmoid(v*x)/groupstd(x)*gamma+beta,
    batch-independent, replaces norm + activation. Where no activation follows it normalizes
    without the gate (S0a). groups 8 by default (timm: 32; ResNet-20 has 16-channel layers), eps
    1e-5."""
    check_eps("evonorm_s0", eps)
    resolved = resolve_groups("evonorm_s0", num_channels, groups, group_size)
    return EvoNormS0(num_channels, resolved, gated=activation is not None, eps=eps)
