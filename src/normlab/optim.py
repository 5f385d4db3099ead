"""Optimizer parameter groups, the linear scaling rule and warm-up schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from normlab.norms import is_norm_layer


def scaled_lr(base_lr: float, global_batch_size: int, ref_batch_size: int | None) -> float:
    """Linear scaling rule (Goyal et al.): `base_lr` holds at `ref_batch_size`."""
    if not ref_batch_size:
        return base_lr
    return base_lr * global_batch_size / ref_batch_size


def split_parameters(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases, norm parameters): norm parameters are those owned by norm layers."""
    norm_ids: set[int] = set()
    for module in model.modules():
        if is_norm_layer(module):
            norm_ids.update(id(p) for p in module.parameters())
    weights, biases, norm_params = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in norm_ids:
            norm_params.append(param)
        elif param.ndim <= 1:
            biases.append(param)
        else:
            weights.append(param)
    return weights, biases, norm_params


def build_param_groups(
    model: nn.Module, weight_decay: float, norm_weight_decay: bool
) -> list[dict[str, Any]]:
    """Decay conv/linear weights; decay norm parameters only when asked; never biases."""
    weights, biases, norm_params = split_parameters(model)
    groups = [
        {"params": weights, "weight_decay": weight_decay, "group": "weights"},
        {"params": biases, "weight_decay": 0.0, "group": "biases"},
        {
            "params": norm_params,
            "weight_decay": weight_decay if norm_weight_decay else 0.0,
            "group": "norm",
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum over the parameter groups."""
    name = cfg.get("name", "sgd")
    if name != "sgd":
        raise ValueError(f"optim.name must be sgd, got '{name}'")
    groups = build_param_groups(model, float(cfg["weight_decay"]), bool(cfg["norm_weight_decay"]))
    return torch.optim.SGD(
        groups, lr=lr, momentum=float(cfg["momentum"]), nesterov=bool(cfg.get("nesterov", False))
    )


def lr_lambda(
    cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int
) -> Callable[[int], float]:
    """Multiplier of the base rate per optimizer step: linear warm-up (at most a fifth of the
    run), then cosine or step decay."""
    name = cfg.get("name")
    # Warm-up is capped at a fifth of the run, so one-epoch runs still decay.
    warmup = min(int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)), total_steps // 5)
    if name not in ("cosine", "step", "constant"):
        raise ValueError(f"sched.name must be cosine, step or constant, got '{name}'")
    milestones = [int(round(e * steps_per_epoch)) for e in cfg.get("milestones", [])]
    gamma = float(cfg.get("gamma", 0.1))
    final = float(cfg.get("min_lr_ratio", 0.0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "step":
            return gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor
