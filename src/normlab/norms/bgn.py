"""Batch Group Normalization (Zhou et al., arXiv 2012.02782).

The (C, H, W) axes are merged and split into G groups; each group is normalized with statistics
over the batch and the group's elements, i.e. BN over a (N, G, C/G*H*W) view, followed by a
per-channel affine. Running statistics are per group (torch BN EMA, unbiased running variance).
Only G <= C with G | C is supported (groups of whole channels), so G = C is exactly BN and the
evaluation transform stays a foldable per-channel affine. Under virtual devices each chunk of
`virtual_batch_size` samples is normalized on its own (normlab.norms.virtual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.base import NormLayer
from normlab.norms.checks import check_eps, check_groups, check_momentum
from normlab.norms.population import (
    PopulationStats,
    population_var,
    record_batch_norm,
    record_chunk_statistics,
)
from normlab.norms.registry import register_norm
from normlab.norms.virtual import VirtualDevices, chunk_batch_norm


class BatchGroupNormZhou2d(NormLayer, PopulationStats, VirtualDevices):
    """BN over (N, G, C/G*H*W) with per-group running statistics and per-channel affine."""

    batch_dependent = True

    def __init__(self, num_channels: int, groups: int, momentum: float | None, eps: float) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.groups = groups
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(groups))
        self.register_buffer("running_var", torch.ones(groups))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, groups={self.groups}, momentum={self.momentum}, eps={self.eps}"
        )

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        xv = x.reshape(n, self.groups, -1)
        mode = self.stats_mode
        batch_stats = mode == "record" or (mode == "ema" and self.training)
        chunks = self.virtual_chunks(x) if batch_stats else 1
        if chunks > 1:
            assert self.virtual_batch_size is not None
            y, mean, var = chunk_batch_norm(xv, self.virtual_batch_size, None, None, self.eps)
            if mode == "ema":
                self._update_running(mean.mean(0), var.mean(0))
            else:
                record_chunk_statistics(self, mean, var, xv.numel() // self.groups // chunks)
        elif mode == "ema" and self.training:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked.item())
                if self.momentum is None
                else self.momentum
            )
            y = F.batch_norm(
                xv, self.running_mean, self.running_var, None, None, True, factor, self.eps
            )
        elif mode == "record":
            y = record_batch_norm(self, xv, eps=self.eps)
        elif mode == "batch":
            y = F.batch_norm(xv, None, None, None, None, True, 0.0, self.eps)
        else:
            y = F.batch_norm(
                xv, self.running_mean, self.running_var, None, None, False, 0.0, self.eps
            )
        y = y.reshape_as(x)
        shape = (1, -1, 1, 1)
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape)).to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor) -> None:
        """One EMA (or cumulative) update with the mean of the per-chunk statistics."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(var.to(self.running_var.dtype), factor)

    def _load_population(self, mean: Tensor, ex2: Tensor) -> None:
        self.running_mean.copy_(mean)
        self.running_var.copy_(population_var(mean, ex2))


@register_norm(
    "bgn",
    batch_dependent=True,
    summary="Batch Group Norm (Zhou): BN over G groups of the merged C*H*W axis",
)
def build_bgn(
    num_channels: int, *, groups: int = 8, momentum: float | None = 0.1, eps: float = 1e-5
) -> BatchGroupNormZhou2d:
    """BGN with `groups` groups of whole channels (G | C); G = C is BN."""
    check_groups("bgn", num_channels, groups)
    check_momentum("bgn", momentum)
    check_eps("bgn", eps)
    return BatchGroupNormZhou2d(num_channels, groups, momentum, float(eps))
