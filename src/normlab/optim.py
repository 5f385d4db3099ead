"""Optimizer parameter groups, the linear scaling rule and warm-up schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normlab.norms import is_norm_layer


def scaled_lr(base_lr: float, global_batch_size: int, ref_batch_size: int | None) -> float:
    """Linear scaling rule (Goyal et al.): `base_lr` holds at `ref_batch_size`."""
    if not ref_batch_size:
        return base_lr
    return base_lr * global_batch_size / ref_batch_size


NORM_WEIGHT_DECAY_CHOICES = ("false", "true", "toward_one")


@dataclass
class ParameterSplit:
    """The model's trainable parameters by how weight decay treats them."""

    weights: list[nn.Parameter] = field(default_factory=list)  # conv / linear weights
    biases: list[nn.Parameter] = field(default_factory=list)  # biases outside norm layers
    norm_scales: list[nn.Parameter] = field(default_factory=list)  # gamma of norm layers
    norm_other: list[nn.Parameter] = field(default_factory=list)  # beta and other norm parameters
    proxy: list[nn.Parameter] = field(default_factory=list)  # Proxy Norm's proxy parameters


def split_parameters(model: nn.Module) -> ParameterSplit:
    """Sort parameters: norm parameters are those owned by normlab norm layers; a norm layer's
    own `weight` is its scale gamma; `proxy_parameters()` of a layer (Proxy Norm) go apart."""
    split = ParameterSplit()
    scale_ids: set[int] = set()
    norm_ids: set[int] = set()
    proxy_ids: set[int] = set()
    for module in model.modules():
        if not is_norm_layer(module):
            continue
        norm_ids.update(id(p) for p in module.parameters())
        for layer in module.modules():
            weight = layer._parameters.get("weight") if is_norm_layer(layer) else None
            if weight is not None:
                scale_ids.add(id(weight))
            if hasattr(layer, "proxy_parameters"):
                proxy_ids.update(id(p) for p in layer.proxy_parameters())
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in proxy_ids:
            split.proxy.append(param)
        elif id(param) in scale_ids:
            split.norm_scales.append(param)
        elif id(param) in norm_ids:
            split.norm_other.append(param)
        elif param.ndim <= 1:
            split.biases.append(param)
        else:
            split.weights.append(param)
    return split


def parse_norm_weight_decay(value: object) -> str:
    """`optim.norm_weight_decay` as one of false, true, toward_one."""
    text = str(value).lower()
    if text not in NORM_WEIGHT_DECAY_CHOICES:
        raise ValueError(
            f"optim.norm_weight_decay must be one of {', '.join(NORM_WEIGHT_DECAY_CHOICES)}, got {value!r}"
        )
    return text


def build_param_groups(
    model: nn.Module, weight_decay: float, norm_weight_decay: object
) -> list[dict[str, Any]]:
    """Decay conv/linear weights and Proxy Norm's proxy parameters; never plain biases; norm
    gamma/beta not at all (false), toward 0 (true) or gamma toward 1 and beta toward 0
    (toward_one, Summers & Dinneen 2020)."""
    mode = parse_norm_weight_decay(norm_weight_decay)
    split = split_parameters(model)
    norm_decay = 0.0 if mode == "false" else weight_decay
    groups: list[dict[str, Any]] = [
        {"params": split.weights, "weight_decay": weight_decay, "group": "weights"},
        {"params": split.biases, "weight_decay": 0.0, "group": "biases"},
        {"params": split.proxy, "weight_decay": weight_decay, "group": "proxy"},
        {"params": split.norm_other, "weight_decay": norm_decay, "group": "norm"},
    ]
    if mode == "toward_one":
        groups.append(
            {
                "params": split.norm_scales,
                "weight_decay": 0.0,
                "target_weight_decay": weight_decay,
                "decay_target": 1.0,
                "group": "norm_scale",
            }
        )
    else:
        groups.append(
            {"params": split.norm_scales, "weight_decay": norm_decay, "group": "norm_scale"}
        )
    return [g for g in groups if g["params"]]


class SGDWithDecayTargets(torch.optim.SGD):
    """SGD whose L2 decay pulls groups with a `decay_target` toward that value instead of 0
    (the gradient gets `target_weight_decay * (p - target)`); other groups are plain SGD.
    A closure (Lightning passes one that zeroes and recomputes the gradients) runs first."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            target = group.get("decay_target")
            decay = group.get("target_weight_decay", 0.0)
            if target is None or not decay:
                continue
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.add_(param - target, alpha=decay)
        super().step()
        return loss


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum over the parameter groups."""
    name = cfg.get("name", "sgd")
    if name != "sgd":
        raise ValueError(f"optim.name must be sgd, got '{name}'")
    groups = build_param_groups(
        model, float(cfg["weight_decay"]), cfg.get("norm_weight_decay", False)
    )
    return SGDWithDecayTargets(
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
