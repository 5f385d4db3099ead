"""Synchronized Batch Normalization: BN over the global batch of all ranks (as in
torch.nn.SyncBatchNorm; see Wu & Johnson, arXiv 2105.07576, Sec. 2.6).

Each rank computes its per-channel count, mean and biased variance; one all_gather over the
default process group combines them exactly (Chan's parallel formula, so unequal per-rank sizes
are fine). The backward all-reduces the per-channel sums of dy and dy*x_hat, so input gradients
are those of BN on the concatenated batch; gamma/beta gradients stay per-rank (DDP reduces them).
Works with gloo on CPU and NCCL on GPU. Running statistics use the global unbiased variance.
Without an initialized process group, or with world size 1, the layer is exactly `bn`.
"record" mode records this rank's local moments (all_reduce them before finish_recording).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx

from normlab.norms.batch import BatchNorm2d
from normlab.norms.checks import check_eps, check_momentum
from normlab.norms.population import moments
from normlab.norms.registry import register_norm


def distributed_world_size() -> int:
    """World size of the default process group, 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _global_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Global per-channel (mean, biased var, count) over all ranks, in float32 or wider."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
    count = torch.full_like(mean, float(x.numel() // x.shape[1]))
    local = torch.stack([count, mean, var])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    stats = torch.stack(gathered)  # (R, 3, C)
    counts, means, variances = stats[:, 0], stats[:, 1], stats[:, 2]
    total = counts.sum(0)
    g_mean = (counts * means).sum(0) / total
    g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
    return g_mean, g_var, total


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = (x - mu_global) * rsqrt(var_global + eps) * w + b with a matching global backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, var, total = _global_stats(x)
        invstd = torch.rsqrt(var + eps)
        x_hat = (x - mean.view(1, -1, 1, 1).to(x.dtype)) * invstd.view(1, -1, 1, 1).to(x.dtype)
        y = x_hat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(x_hat, weight, invstd, total)
        ctx.mark_non_differentiable(mean, var, total)
        return y, mean, var, total

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x_hat, weight, invstd, total = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        sum_dy = grad_y.sum(dim=(0, 2, 3))
        sum_dy_xhat = (grad_y * x_hat).sum(dim=(0, 2, 3))
        grad_weight = sum_dy_xhat.clone() if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.clone() if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            compute = invstd.dtype  # float32 for half inputs, else the input's own precision
            sums = torch.stack([sum_dy, sum_dy_xhat]).to(compute)
            dist.all_reduce(sums)
            mean_dy = (sums[0] / total).view(1, -1, 1, 1)
            mean_dy_xhat = (sums[1] / total).view(1, -1, 1, 1)
            scale = (weight.to(compute) * invstd).view(1, -1, 1, 1)
            grad_x = (scale * (grad_y - mean_dy - x_hat * mean_dy_xhat)).to(grad_y.dtype)
        return grad_x, grad_weight, grad_bias, None


class SyncBatchNorm2d(BatchNorm2d):
    """BN whose batch statistics span all ranks of the default process group.

    Under virtual devices it normalizes over all chunks of the process's batch at once: it is
    synchronized across the virtual ranks as across the real ones.
    """

    def virtual_chunks(self, x: Tensor) -> int:
        return 1

    def batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        if not self.uses_batch_statistics() or distributed_world_size() == 1:
            return super().batch_norm(x, weight, bias)
        if weight is None or bias is None:
            raise ValueError("syncbn: the synchronized path needs the affine parameters")
        if self.stats_mode == "record":
            mean, ex2 = moments(x, (0, 2, 3))
            self._record(x.numel() // x.shape[1], mean, ex2)
        y, g_mean, g_var, total = _SyncBatchNormFunction.apply(x, weight, bias, self.eps)
        if self.updates_running_statistics():  # the global mean and unbiased variance
            self._update_population(g_mean, g_var * total / (total - 1).clamp_min(1))
        return y


@register_norm("syncbn", summary="BN over all ranks (gloo or NCCL); = `bn` in one process")
def build_syncbn(
    num_channels: int, *, momentum: float | None = 0.1, eps: float = 1e-5
) -> SyncBatchNorm2d:
    """Synchronized BN (as torch.nn.SyncBatchNorm; Wu & Johnson 2021 Sec. 2.6): batch statistics
    over all ranks of the default process group (gloo or NCCL); identical to bn on a single
    process. Running variance uses the global unbiased estimate. momentum 0.1, eps 1e-5."""
    check_momentum("syncbn", momentum)
    check_eps("syncbn", eps)
    return SyncBatchNorm2d(num_channels, eps=eps, momentum=momentum)
