"""Batch Normalization (Ioffe & Szegedy, ICML 2015): statistics over (N, H, W) per channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.base import NormLayer
from normlab.norms.checks import check_eps, check_momentum
from normlab.norms.population import (
    PopulationStats,
    population_var,
    record_batch_norm,
    record_chunk_statistics,
)
from normlab.norms.registry import register_norm
from normlab.norms.virtual import VirtualDevices, chunk_batch_norm


class BatchNorm2d(nn.BatchNorm2d, NormLayer, PopulationStats, VirtualDevices):
    """torch's BatchNorm2d, marked batch-dependent, with the population-statistics modes.

    In "ema" mode this is exactly torch's BatchNorm2d: normalizes with the biased batch variance
    in training; the running variance keeps the unbiased estimate; `momentum=None` keeps a
    cumulative (simple) average. The other stats modes (see normlab.norms.population) go
    through F.batch_norm without touching the running buffers. With `virtual_batch_size` set
    (virtual devices, normlab.norms.virtual) training and recording normalize each chunk of
    that many samples on its own, and the running statistics take the mean of the per-chunk
    updates (the mean of the per-rank buffers under DDP).
    """

    batch_dependent = True
    eval_alpha: float = 0.0  # example-weighed inference (Summers & Dinneen 2020), 0 = plain BN

    def forward(self, x: Tensor) -> Tensor:
        if self.eval_alpha > 0.0 and not self.training and self.stats_mode in ("ema", "population"):
            return self.example_weighed(x)
        return self.batch_norm(x, self.weight, self.bias)

    def example_weighed(self, x: Tensor) -> Tensor:
        """Evaluation with each example's own moments mixed into the population moments:
        mu_i = a*m_i + (1-a)*E[x], s_i = a*E_i[x^2] + (1-a)*E[x^2], var_i = s_i - mu_i^2."""
        assert self.running_mean is not None and self.running_var is not None
        alpha = self.eval_alpha
        shape = (1, -1, 1, 1)
        pop_mean = self.running_mean.view(shape)
        pop_ex2 = (self.running_var + self.running_mean.pow(2)).view(shape)
        own_mean = x.mean(dim=(2, 3), keepdim=True)
        own_ex2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
        mean = alpha * own_mean + (1 - alpha) * pop_mean
        var = (alpha * own_ex2 + (1 - alpha) * pop_ex2 - mean.pow(2)).clamp_min(0.0)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """Normalize `x` per channel as `stats_mode` says, then apply the given affine."""
        mode = self.stats_mode
        if mode == "ema":
            return self._ema_batch_norm(x, weight, bias)
        if mode == "population":
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
        if mode == "record":
            if self.virtual_chunks(x) > 1:
                return self._chunked_record(x, weight, bias)
            return record_batch_norm(self, x, weight, bias, self.eps)
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)

    def _chunked(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-chunk BN of `x`: (output, per-chunk mean, per-chunk unbiased var)."""
        self._check_input_dim(x)
        assert self.virtual_batch_size is not None
        n, c = x.shape[:2]
        y, mean, var = chunk_batch_norm(
            x.reshape(n, c, -1), self.virtual_batch_size, weight, bias, self.eps
        )
        return y.view_as(x), mean, var

    def _chunked_record(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        y, mean, var = self._chunked(x, weight, bias)
        record_chunk_statistics(self, mean, var, x.numel() // x.shape[1] // mean.shape[0])
        return y

    @torch.no_grad()
    def _update_running_chunks(self, mean: Tensor, var: Tensor) -> None:
        """One EMA (or cumulative) update with the mean of the per-chunk statistics: the mean
        of the buffers of ranks that each updated with their own chunk."""
        if self.running_mean is None or self.running_var is None:
            return
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.mean(0).to(self.running_mean.dtype), factor)
        self.running_var.lerp_(var.mean(0).to(self.running_var.dtype), factor)

    def _ema_batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """torch's BatchNorm2d forward with the affine given (not necessarily this module's own):
        batch statistics and an EMA (or cumulative, momentum None) update in training."""
        if self.training and self.virtual_chunks(x) > 1:
            y, mean, var = self._chunked(x, weight, bias)
            self._update_running_chunks(mean, var)
            return y
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x, self.running_mean, self.running_var, weight, bias, self.training, factor, self.eps
        )

    def _load_population(self, mean: Tensor, ex2: Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None
        self.running_mean.copy_(mean)
        self.running_var.copy_(population_var(mean, ex2))


@register_norm("bn", batch_dependent=True, summary="BatchNorm over (N,H,W) per channel")
def build_bn(num_channels: int, *, momentum: float | None = 0.1, eps: float = 1e-5) -> BatchNorm2d:
    """BatchNorm with PyTorch's EMA convention r <- (1 - momentum) r + momentum s."""
    check_momentum("bn", momentum)
    check_eps("bn", eps)
    return BatchNorm2d(num_channels, eps=eps, momentum=momentum)
