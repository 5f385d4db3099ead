"""Batch Normalization (Ioffe & Szegedy, ICML 2015): statistics over (N, H, W) per channel."""

from __future__ import annotations

from torch import nn

from normlab.norms.base import NormLayer
from normlab.norms.registry import register_norm


class BatchNorm2d(nn.BatchNorm2d, NormLayer):
    """torch's BatchNorm2d, marked batch-dependent.

    Normalizes with the biased batch variance in training; the running variance keeps the
    unbiased estimate; `momentum=None` keeps a cumulative (simple) average instead of an EMA.
    """

    batch_dependent = True


def _check_momentum(name: str, momentum: float | None) -> None:
    if momentum is not None and not 0.0 < float(momentum) <= 1.0:
        raise ValueError(
            f"{name}: momentum must be in (0, 1] or null (cumulative average), got {momentum}"
        )


def _check_eps(name: str, eps: float) -> None:
    if not float(eps) > 0.0:
        raise ValueError(f"{name}: eps must be > 0, got {eps}")


@register_norm("bn", batch_dependent=True, summary="BatchNorm over (N,H,W) per channel")
def build_bn(num_channels: int, *, momentum: float | None = 0.1, eps: float = 1e-5) -> BatchNorm2d:
    """BatchNorm with PyTorch's EMA convention r <- (1 - momentum) r + momentum s."""
    _check_momentum("bn", momentum)
    _check_eps("bn", eps)
    return BatchNorm2d(num_channels, eps=eps, momentum=momentum)
