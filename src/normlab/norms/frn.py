"""Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, CVPR 2020;
docs/methods.md, "frn"): nu2 = mean_{H,W} x^2 per sample and channel,
y = gamma * x / sqrt(nu2 + eps) + beta, z = max(y, tau) with a learned per-channel tau (init 0).
No mean centring, hence the TLU.

FRN+TLU replaces a norm + ReLU pair. Where no activation follows, FRN is applied without TLU;
with another activation (silu, ...) FRN is followed by that activation. `learnable_eps` makes
the epsilon eps + |eps_l| with one learnable eps_l per layer (init 1e-4), which the paper
recommends for 1x1 feature maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.norms._fast import mean_square
from normlab.norms.activations import make_activation
from normlab.norms.base import NormLayer
from normlab.norms.checks import check_eps
from normlab.norms.registry import register_norm


class FilterResponseNorm(NormLayer):
    """FRN, then TLU (activation relu), nothing (None) or another activation."""

    batch_dependent = False
    fuses_activation = True

    def __init__(
        self, num_channels: int, activation: str | None, eps: float, learnable_eps: bool
    ) -> None:
        super().__init__()
        self.eps = eps
        self.activation = activation
        self._init_affine(num_channels)
        self.tau = nn.Parameter(torch.zeros(num_channels)) if activation == "relu" else None
        self.act = make_activation(activation) if activation not in (None, "relu") else None
        self.eps_l = nn.Parameter(torch.full((1,), 1e-4)) if learnable_eps else None

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, activation={self.activation}, eps={self.eps}, learnable_eps={self.eps_l is not None}"

    def effective_eps(self) -> Tensor | float:
        """eps, plus |eps_l| when learnable."""
        return self.eps + self.eps_l.abs() if self.eps_l is not None else self.eps

    def forward(self, x: Tensor) -> Tensor:
        """FRN from cheap kernels: nu2 with a one-pass backward (normlab.norms._fast), the
        per-(sample, channel) scale in one multiply, and the TLU as relu(y - tau) + tau, whose
        backward is relu's threshold kernel (torch.maximum's backward is many times slower)."""
        if torch.compiler.is_compiling():
            return self._reference_forward(x)  # inductor fuses the plain formula best
        nu2 = mean_square(x, (2, 3))
        scale = torch.rsqrt(nu2 + self.effective_eps()) * self.weight.view(1, -1, 1, 1)
        scale = scale.to(x.dtype)
        y = x * scale
        if self.tau is None:
            y = y + self.bias.view(1, -1, 1, 1)
            return self.act(y) if self.act is not None else y
        tau = self.tau.view(1, -1, 1, 1)
        return torch.relu_(y.add_((self.bias - self.tau).view(1, -1, 1, 1))) + tau

    def _reference_forward(self, x: Tensor) -> Tensor:
        """The formula written out (the tests compare `forward` with it)."""
        shape = (1, -1, 1, 1)
        nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
        y = x * torch.rsqrt(nu2 + self.effective_eps()) * self.weight.view(shape) + self.bias.view(
            shape
        )
        if self.tau is not None:
            return torch.maximum(y, self.tau.view(shape))
        return self.act(y) if self.act is not None else y


@register_norm("frn", summary="Filter Response Norm + TLU (Singh & Krishnan 2020)")
def build_frn(
    num_channels: int,
    *,
    activation: str | None = None,
    eps: float = 1e-6,
    learnable_eps: bool = False,
) -> FilterResponseNorm:
    """Filter Response Normalization + TLU (Singh & Krishnan, CVPR 2020): x/sqrt(mean_hw x^2 +
    eps), per-channel affine, then max(y, tau). eps 1e-6; learnable_eps adds |eps_l| (one per
    layer)."""
    check_eps("frn", eps)
    return FilterResponseNorm(num_channels, activation, float(eps), bool(learnable_eps))
