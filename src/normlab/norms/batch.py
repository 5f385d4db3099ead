"""Batch Normalization (Ioffe & Szegedy, ICML 2015): statistics over (N, H, W) per channel."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.base import NormLayer
from normlab.norms.population import PopulationStats, moments, population_var
from normlab.norms.registry import register_norm


class BatchNorm2d(nn.BatchNorm2d, NormLayer, PopulationStats):
    """torch's BatchNorm2d, marked batch-dependent, with the population-statistics modes.

    In "ema" mode this is exactly torch's BatchNorm2d: normalizes with the biased batch variance
    in training; the running variance keeps the unbiased estimate; `momentum=None` keeps a
    cumulative (simple) average. The other stats modes (see normlab.norms.population) go
    through F.batch_norm without touching the running buffers.
    """

    batch_dependent = True

    def forward(self, x: Tensor) -> Tensor:
        return self.batch_norm(x, self.weight, self.bias)

    def batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """Normalize `x` per channel as `stats_mode` says, then apply the given affine."""
        mode = self.stats_mode
        if mode == "ema":
            return super().forward(x)
        if mode == "population":
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
        if mode == "record":
            mean, ex2 = moments(x, (0, 2, 3))
            self._record(x.numel() // x.shape[1], mean, ex2)
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)

    def _load_population(self, mean: Tensor, ex2: Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None
        self.running_mean.copy_(mean)
        self.running_var.copy_(population_var(mean, ex2))


def check_momentum(name: str, momentum: float | None, allow_none: bool = True) -> None:
    """Refuse a momentum outside (0, 1] (None allowed where a cumulative average is)."""
    if momentum is None and allow_none:
        return
    if momentum is None or not 0.0 < float(momentum) <= 1.0:
        extra = " or null (cumulative average)" if allow_none else ""
        raise ValueError(f"{name}: momentum must be in (0, 1]{extra}, got {momentum}")


def check_eps(name: str, eps: float) -> None:
    """Refuse a non-positive eps."""
    if not float(eps) > 0.0:
        raise ValueError(f"{name}: eps must be > 0, got {eps}")


@register_norm("bn", batch_dependent=True, summary="BatchNorm over (N,H,W) per channel")
def build_bn(num_channels: int, *, momentum: float | None = 0.1, eps: float = 1e-5) -> BatchNorm2d:
    """BatchNorm with PyTorch's EMA convention r <- (1 - momentum) r + momentum s."""
    check_momentum("bn", momentum)
    check_eps("bn", eps)
    return BatchNorm2d(num_channels, eps=eps, momentum=momentum)
