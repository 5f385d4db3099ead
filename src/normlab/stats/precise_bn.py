"""PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's update_bn_stats):
recompute the population statistics of every batch-dependent layer from a fixed model over
N training samples, with equal weight per sample and the total-variance estimator
Var = E_b[var_b + mean_b^2] - mean^2, identical on every DDP rank."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from normlab.norms.population import iter_population_layers


def _first_tensor(batch: object) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise ValueError("PreciseBN batches must be tensors or (inputs, targets) pairs")


def _all_reduce_moments(layers: list, device: torch.device) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for layer in layers:
        moments = layer.recorded_moments().to(device)
        dist.all_reduce(moments)
        layer.load_recorded_moments(moments)


@torch.no_grad()
def update_population_stats(model: nn.Module, batches: Iterable[object], num_samples: int) -> int:
    """Recompute population statistics of `model`'s batch-dependent layers over `num_samples`.

    `batches` yields inputs or (inputs, targets) pairs, as a DataLoader does. The model's
    weights and train/eval mode are left as they were; only the population buffers change.
    Under DDP every rank runs its own samples and the accumulated moments are all-reduced, so
    the buffers come out identical on all ranks. Returns the number of layers updated.
    Raises ValueError when the loader runs short of `num_samples`.
    """
    if num_samples < 1:
        raise ValueError(f"PreciseBN needs num_samples >= 1, got {num_samples}")
    layers = list(iter_population_layers(model))
    if not layers:
        return 0
    was_training = model.training
    modes = [layer.stats_mode for layer in layers]
    device = next(model.parameters()).device
    model.eval()  # dropout and the like off; the layers record batch statistics in eval mode
    seen = 0
    try:
        for layer in layers:
            layer.start_recording()
        for batch in batches:
            inputs = _first_tensor(batch)
            take = min(len(inputs), num_samples - seen)
            if take < len(inputs) and take < 2 and seen > 0:
                break  # a final batch of one sample would weigh a single-image statistic
            model(inputs[:take].to(device, non_blocking=True))
            seen += take
            if seen >= num_samples:
                break
        if seen < num_samples and not (seen > 0 and num_samples - seen < 2):
            raise ValueError(
                f"PreciseBN asked for {num_samples} samples but the loader yielded only {seen}; "
                "lower precise_bn.num_samples or use a larger data set"
            )
        _all_reduce_moments(layers, device)
        for layer in layers:
            layer.finish_recording()
    finally:
        for layer, mode in zip(layers, modes, strict=True):
            layer.stats_mode = mode
        model.train(was_training)
    return len(layers)
