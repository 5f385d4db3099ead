"""Statistics with one-pass, hand-written backward passes for the eager fast paths of the norms.

On CPU, torch.var_mean is several times slower than a normalization kernel, and the backward
of linalg.vector_norm or of x.pow(2).mean costs several full-size passes. These functions
compute the same statistics from sums (two-pass variance: mean, then the mean square of the
centred values) and give the input gradient as one multiply-add per element.
Half-precision inputs are reduced in float32 and the statistics returned in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _count(x: Tensor, dims: tuple[int, ...]) -> int:
    count = 1
    for dim in dims:
        count *= x.shape[dim]
    return count


def _wide(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _sum_squares(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum of x^2 over `dims` (keepdim): vector_norm over the trailing reduced dims of a
    contiguous x (fast, no x^2 tensor), then a sum of the small squared norms over the rest."""
    wide = _wide(x)
    dims = tuple(sorted(d % x.dim() for d in dims))
    trailing: list[int] = []
    for dim in range(x.dim() - 1, -1, -1):
        if dim not in dims:
            break
        trailing.insert(0, dim)
    if not trailing or not x.is_contiguous():
        return (wide * wide).sum(dims, keepdim=True)
    squares = torch.linalg.vector_norm(wide, dim=tuple(trailing), keepdim=True).square()
    rest = tuple(d for d in dims if d not in trailing)
    return squares.sum(rest, keepdim=True) if rest else squares


class _MeanSquare(torch.autograd.Function):
    """mean(x^2) over `dims` (keepdim); backward x * (2 g / count)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.dims = dims
        return _sum_squares(x, dims) / _count(x, dims)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return x * (grad * (2.0 / _count(x, ctx.dims))).to(x.dtype), None


class _VarMean(torch.autograd.Function):
    """Biased variance and mean over `dims` (keepdim), two-pass; backward x * k + c."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        count = _count(x, dims)
        mean = _wide(x).sum(dims, keepdim=True) / count
        centred = x - mean.to(x.dtype)
        var = _sum_squares(centred, dims) / count
        ctx.save_for_backward(x, mean)
        ctx.dims = dims
        return var, mean

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_var: Tensor | None, grad_mean: Tensor | None
    ) -> tuple[Tensor, None]:
        x, mean = ctx.saved_tensors
        count = _count(x, ctx.dims)
        if grad_var is None:
            grad_var = torch.zeros_like(mean)
        k = grad_var * (2.0 / count)
        c = -mean * k
        if grad_mean is not None:
            c = c + grad_mean / count
        return (x * k.to(x.dtype)).add_(c.to(x.dtype)), None


def mean_square(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """mean(x^2) over `dims`, keepdim, with a one-pass backward."""
    return _MeanSquare.apply(x, dims)


def var_mean(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(biased variance, mean) over `dims`, keepdim, two-pass, with a one-pass backward."""
    return _VarMean.apply(x, dims)


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm given the batch statistics: the forward is the (fast)
    evaluation kernel with the batch mean and variance, the backward torch's training-mode
    kernel (which accounts for the statistics' dependence on x)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        var: Tensor,
        mean: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> Tensor:
        out = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(x, mean, torch.rsqrt(var + eps), weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, None, None, Tensor | None, Tensor | None, None]:
        x, mean, invstd, weight = ctx.saved_tensors
        mask = [
            ctx.needs_input_grad[0],
            weight is not None and ctx.needs_input_grad[3],
            ctx.has_bias and ctx.needs_input_grad[4],
        ]
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(), x, weight, None, None, mean, invstd, True, 0.0, mask
        )
        return grad_x, None, None, grad_w, grad_b, None


def channel_var_mean(x: Tensor) -> tuple[Tensor, Tensor]:
    """Biased variance and mean per channel of an (N, C, ...) tensor, without gradient: two
    passes of sums (torch.var_mean and batch_norm's own statistics are several times slower)."""
    with torch.no_grad():
        var, mean = var_mean(x, (0, *range(2, x.dim())))
        return var.flatten(), mean.flatten()


def batch_norm_train(
    x: Tensor,
    var: Tensor,
    mean: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """F.batch_norm(x, None, None, weight, bias, training=True, eps=eps), given x's biased
    batch variance and mean per channel (`channel_var_mean(x)`); gradients as torch's."""
    return _BatchNormTrain.apply(x, var.detach(), mean.detach(), weight, bias, eps)
