"""Accuracy under a chosen way of normalizing: population vs batch statistics, source vs
re-estimated statistics on a shifted domain."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import nn

from normlab.norms.population import population_layers, state_guard
from normlab.stats.callbacks import training_loader
from normlab.stats.precise_bn import update_population_stats


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, batches: Iterable[Any], device: torch.device) -> float:
    """Top-1 accuracy of `model` in eval mode over (inputs, targets) batches; the model's
    train/eval mode is restored afterwards."""
    correct = total = 0
    with state_guard(model, mode=True):
        model.eval()
        for inputs, targets in batches:
            predictions = model(inputs.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == targets).sum())
            total += len(targets)
    return correct / max(total, 1)


def accuracy_with_batch_stats(
    model: nn.Module, batches: Iterable[Any], device: torch.device
) -> float:
    """Accuracy when every batch-dependent layer normalizes each evaluation batch by itself;
    the layers' statistics modes are restored afterwards."""
    with state_guard(model, stats_modes=True):
        for layer in population_layers(model):
            layer.stats_mode = "batch"
        return evaluate_accuracy(model, batches, device)


def train_test_gap(
    model: nn.Module, batches: Iterable[Any], device: torch.device
) -> dict[str, float]:
    """Validation accuracy with population and with batch statistics (Rethinking BN §2.3)."""
    batches = list(batches)
    population = evaluate_accuracy(model, batches, device)
    batch = accuracy_with_batch_stats(model, batches, device)
    return {
        "val_acc_population_stats": population,
        "val_acc_batch_stats": batch,
        "gap": batch - population,
    }


def domain_shift_accuracy(
    model: nn.Module,
    target: L.LightningDataModule,
    num_samples: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Shifted-domain validation accuracy with the source statistics and with statistics
    re-estimated on the shifted training data (AdaBN-style); the model is left unchanged."""
    val_batches = list(target.val_dataloader())
    source = evaluate_accuracy(model, val_batches, device)
    with state_guard(model, state_dict=True):
        available = len(target.train_set)  # type: ignore[attr-defined]
        count = min(num_samples, available - available % batch_size)
        update_population_stats(model, training_loader(target, batch_size, seed), count)
        reestimated = evaluate_accuracy(model, val_batches, device)
    return {
        "target_acc_source_stats": source,
        "target_acc_target_stats": reestimated,
        "target_stat_samples": count,
    }
