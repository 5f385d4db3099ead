"""Per-chunk batch statistics: ghost batches and virtual devices.

`virtual_devices=k` (README, "Small per-device batches: virtual devices") runs k DDP ranks of
`batch_size` samples each in one process: a step takes k x batch_size samples, every
batch-dependent layer normalizes each consecutive chunk of batch_size samples on its own (as its
rank would), and its running statistics take the mean of the k per-rank updates, which is what
normlab's DDP reconciliation (the mean of the per-rank buffers) gives, because the EMA and the
cumulative average are linear in the batch statistics. Ghost BN uses the same per-chunk
computation for its ghost batches.

`chunk_batch_norm` does the per-chunk normalization with one native batch_norm kernel on a
permuted view (statistics and their gradients exactly those of BN on each chunk alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def chunk_batch_norm(
    x: Tensor, chunk: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """BN of each consecutive `chunk` of samples of `x` (N, S, L) on its own, per statistic S.

    Returns the output (N, S, L) with the per-statistic affine applied, and the per-chunk mean
    and unbiased variance (k, S), k = N / chunk, detached (for running statistics).
    """
    n, s, length = x.shape
    if n % chunk:
        raise ValueError(f"a batch of {n} samples does not split into chunks of {chunk}")
    k = n // chunk
    stat_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if k == 1:
        permuted = x
    else:
        permuted = x.view(k, chunk, s, length).transpose(0, 1).reshape(chunk, k * s, length)
    mean = torch.zeros(k * s, dtype=stat_dtype, device=x.device)
    var = torch.ones(k * s, dtype=stat_dtype, device=x.device)
    # momentum 1.0 makes the kernel write the batch mean and unbiased variance into mean/var.
    y = F.batch_norm(
        permuted,
        mean,
        var,
        None if weight is None else weight.repeat(k),
        None if bias is None else bias.repeat(k),
        True,
        1.0,
        eps,
    )
    if k > 1:
        y = y.view(chunk, k, s, length).transpose(0, 1).reshape(n, s, length)
    return y, mean.view(k, s), var.view(k, s)


def chunks_of(batch_size: int, chunk: int | None) -> int:
    """Number of chunks a training batch splits into (1 without virtual devices)."""
    if chunk is None or chunk >= batch_size:
        return 1
    if batch_size % chunk:
        raise ValueError(
            f"a training batch of {batch_size} samples does not split into virtual-device "
            f"chunks of {chunk}; the loader must serve batch_size x virtual_devices samples"
        )
    return batch_size // chunk


class VirtualDevices:
    """Mixin: a layer that can normalize per virtual-device chunk (`virtual_batch_size`).

    `virtual_batch_size` None (the default) normalizes the whole batch; an int b makes every
    batch-statistics forward in training or PreciseBN recording normalize each consecutive
    chunk of b samples on its own. Evaluation batches are never split (each rank evaluates its
    own batch). Layers that cannot emulate separate ranks set `virtual_devices_refusal` to the
    reason instead.
    """

    virtual_batch_size: int | None = None
    virtual_devices_refusal: str = ""

    def virtual_chunks(self, x: Tensor) -> int:
        """How many virtual-device chunks the batch `x` normalizes as (1: the whole batch)."""
        return chunks_of(x.shape[0], self.virtual_batch_size)

    def reconcile_virtual_ranks(self) -> None:
        """Make per-virtual-rank state (where a layer keeps any) the ranks' mean, as DDP
        reconciliation does with real ranks' buffers; nothing for stateless layers."""


def reconcile_virtual_ranks(model: nn.Module) -> None:
    """Call `reconcile_virtual_ranks` on every layer of `model` that keeps per-rank state."""
    for module in model.modules():
        if isinstance(module, VirtualDevices):
            module.reconcile_virtual_ranks()


def set_virtual_batch_size(model: nn.Module, chunk: int | None) -> int:
    """Make every batch-dependent layer of `model` normalize per chunk of `chunk` samples
    (None: the whole batch). Refuses, with the layer's reason, a layer that cannot.

    Returns the number of layers set.
    """
    count = 0
    for module in _batch_dependent(model):
        refusal = getattr(module, "virtual_devices_refusal", "")
        if chunk is not None and refusal:
            raise ValueError(f"virtual_devices > 1 is not supported by {refusal}")
        if isinstance(module, VirtualDevices):
            module.virtual_batch_size = chunk
            count += 1
        elif chunk is not None:
            raise ValueError(
                f"virtual_devices > 1 is not supported by {type(module).__name__}: it does not "
                "implement per-chunk statistics; use virtual_devices=1"
            )
    return count


def virtual_batch_size_of(model: nn.Module) -> int | None:
    """The chunk size the batch-dependent layers of `model` normalize with (None: whole batch)."""
    for module in model.modules():
        if isinstance(module, VirtualDevices) and module.virtual_batch_size is not None:
            return module.virtual_batch_size
    return None


def _batch_dependent(model: nn.Module) -> Iterator[nn.Module]:
    from normlab.norms.base import NormAct, is_norm_layer

    for module in model.modules():
        if isinstance(module, NormAct):
            continue  # its inner layer is visited itself
        if is_norm_layer(module) and getattr(module, "batch_dependent", False):
            yield module
