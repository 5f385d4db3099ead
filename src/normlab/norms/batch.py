"""Batch Normalization (Ioffe & Szegedy, ICML 2015): statistics over (N, H, W) per channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.base import NormLayer
from normlab.norms.checks import check_eps, check_momentum
from normlab.norms.population import PopulationStats, record_batch_norm, record_chunk_statistics
from normlab.norms.registry import register_norm
from normlab.norms.virtual import VirtualDevices, chunk_batch_norm


class BatchNormByMode(PopulationStats, VirtualDevices):
    """Batch normalization of an (N, S, ...) input per statistic S with the `running_mean` and
    `running_var` buffers, as `stats_mode` says; shared by bn (S = channels) and bgn (S =
    channel groups of a reshaped input).

    "ema" is torch's BatchNorm: training normalizes with the biased batch variance and updates
    the running mean and unbiased variance (momentum None: cumulative average); evaluation uses
    them. "population" uses them in training too, "batch" never, and "record" normalizes with
    the batch statistics and records them, all without touching the buffers. Training and
    recording with `virtual_batch_size` set normalize each chunk of that many samples on its
    own, and the running statistics take the mean of the per-chunk updates (the mean of the
    per-rank buffers under DDP).
    """

    running_mean: Tensor
    running_var: Tensor
    eps: float

    def batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """Normalize `x` per statistic as `stats_mode` says, then apply the given affine."""
        mode = self.stats_mode
        if mode == "ema":
            self._check_input_dim(x)
        if not self.uses_batch_statistics():
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
        if mode == "batch":
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if self.virtual_chunks(x) > 1:
            y, mean, var = self._chunked(x, weight, bias)
            if mode == "record":
                record_chunk_statistics(self, mean, var, x.numel() // x.shape[1] // mean.shape[0])
            else:
                self._update_population(mean.mean(0), var.mean(0))
            return y
        if mode == "record":
            return record_batch_norm(self, x, weight, bias, self.eps)
        factor = self._ema_factor()
        return F.batch_norm(
            x, self.running_mean, self.running_var, weight, bias, True, factor, self.eps
        )

    def _check_input_dim(self, x: Tensor) -> None:
        """Accept any (N, S, ...) input (torch's BatchNorm2d, first in bn's bases, wants 4-d)."""

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


class BatchNorm2d(nn.BatchNorm2d, NormLayer, BatchNormByMode):
    """torch's BatchNorm2d, marked batch-dependent, with the population-statistics modes.

    In "ema" mode this is exactly torch's BatchNorm2d (see BatchNormByMode for the other modes
    and virtual devices).
    """

    batch_dependent = True
    supports_eval_alpha = True  # example_weighed below; kept by the layers that keep forward

    def forward(self, x: Tensor) -> Tensor:
        if self.eval_alpha > 0.0 and not self.training and not self.uses_batch_statistics():
            return self.example_weighed(x)
        return self.batch_norm(x, self.weight, self.bias)

    def example_weighed(self, x: Tensor) -> Tensor:
        """Evaluation with each example's own moments mixed into the population moments:
        mu_i = a*m_i + (1-a)*E[x], s_i = a*E_i[x^2] + (1-a)*E[x^2], var_i = s_i - mu_i^2."""
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


@register_norm("bn", summary="BatchNorm (Ioffe & Szegedy 2015): over (N,H,W) per channel")
def build_bn(num_channels: int, *, momentum: float | None = 0.1, eps: float = 1e-5) -> BatchNorm2d:
    """Batch Normalization (Ioffe & Szegedy, ICML 2015): batch statistics over (N,H,W) per
    channel in training, running (EMA) statistics at evaluation. PyTorch convention r <- (1-m) r
    + m s; momentum: null keeps a cumulative average."""
    check_momentum("bn", momentum)
    check_eps("bn", eps)
    return BatchNorm2d(num_channels, eps=eps, momentum=momentum)
