"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, NeurIPS 2017, "Train longer, generalize
better"): BN over ghost batches of `ghost_batch_size` samples of the per-device batch.

All ghost batches are normalized by one native batch_norm kernel on a permuted view
(normlab.norms.virtual.chunk_batch_norm). The running
statistics follow the official bigBatch code (one EMA update per ghost batch, in order): for k
ghost batches with statistics s_0..s_{k-1} the update is applied in closed form,
r <- (1-m)^k r + sum_j m (1-m)^(k-1-j) s_j, which equals k sequential torch-BN updates
(unbiased variance per ghost batch, n = g*H*W). momentum=None gives the cumulative average over
ghost batches, as torch BN does over batches. Under virtual devices the ghost batches lie
inside each device's chunk (ghost_batch_size must divide batch_size) and the running statistics
are the mean of what each device's sequence of ghost updates gives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.norms.batch import BatchNorm2d
from normlab.norms.checks import check_divides_batch, check_eps, check_int, check_momentum
from normlab.norms.population import record_chunk_statistics
from normlab.norms.registry import register_norm
from normlab.norms.virtual import chunk_batch_norm


class GhostBatchNorm2d(BatchNorm2d):
    """BatchNorm whose batch statistics are computed per ghost batch of `ghost_batch_size`."""

    def __init__(
        self, num_channels: int, ghost_batch_size: int, momentum: float | None, eps: float
    ) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum)
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def check_batch_size(self, batch_size: int) -> None:
        super().check_batch_size(batch_size)
        check_divides_batch(
            "ghost_bn",
            "ghost_batch_size",
            self.ghost_batch_size,
            batch_size,
            "choose a ghost size that divides it",
        )

    def batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        if not self.uses_batch_statistics():
            return super().batch_norm(x, weight, bias)  # the running statistics, as bn
        self.check_batch_size(x.shape[0])
        n, c = x.shape[:2]
        g = self.ghost_batch_size
        y, mean, var = chunk_batch_norm(x.reshape(n, c, -1), g, weight, bias, self.eps)
        count = x.numel() // c // (n // g)  # elements per ghost batch and channel
        if self.stats_mode == "record":
            record_chunk_statistics(self, mean, var, count)
        elif self.updates_running_statistics():
            # Virtual devices: each rank runs the sequential updates of its own ghost batches;
            # the mean of the ranks' buffers is the sequence of updates with ghost j's
            # statistics averaged over the ranks.
            ranks = self.virtual_chunks(x)
            per_rank = mean.shape[0] // ranks
            self._update_running(
                mean.view(ranks, per_rank, c).mean(0), var.view(ranks, per_rank, c).mean(0)
            )
        return y.view_as(x)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased: Tensor) -> None:
        """Apply k = mean.shape[0] sequential EMA (or cumulative) updates in closed form."""
        if self.running_mean is None or self.running_var is None:
            return
        k = mean.shape[0]
        assert self.num_batches_tracked is not None
        done = int(self.num_batches_tracked.item()) if self.momentum is None else 0
        self.num_batches_tracked.add_(k)
        if self.momentum is None:
            total = done + k
            new_mean = (self.running_mean * done + mean.sum(0)) / total
            new_var = (self.running_var * done + unbiased.sum(0)) / total
        else:
            m = float(self.momentum)
            decay = (1.0 - m) ** torch.arange(k - 1, -1, -1, dtype=mean.dtype, device=mean.device)
            weights = (m * decay).view(k, 1)
            keep = (1.0 - m) ** k
            new_mean = keep * self.running_mean + (weights * mean).sum(0)
            new_var = keep * self.running_var + (weights * unbiased).sum(0)
        self.running_mean.copy_(new_mean)
        self.running_var.copy_(new_var)


@register_norm(
    "ghost_bn",
    summary="Ghost BN (Hoffer et al. 2017): BN per ghost batch, running stats updated per ghost",
    test_params={"ghost_batch_size": 2},
)
def build_ghost_bn(
    num_channels: int,
    *,
    ghost_batch_size: int = 16,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> GhostBatchNorm2d:
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry, NeurIPS 2017): BN statistics per
    ghost batch of ghost_batch_size samples (must divide the per-device batch). Running
    statistics are updated once per ghost batch in order, as in the official bigBatch code,
    computed in closed form r <- (1-m)^k r + sum_j m (1-m)^(k-1-j) s_j. Defaults: ghost 16,
    torch momentum 0.1, eps 1e-5."""
    check_int(
        "ghost_bn", "ghost_batch_size", ghost_batch_size, 2, " that divides the per-device batch"
    )
    check_momentum("ghost_bn", momentum)
    check_eps("ghost_bn", eps)
    return GhostBatchNorm2d(num_channels, ghost_batch_size, momentum, eps)
