"""Per-layer measurements on a fixed probe batch: power decomposition of each norm layer's
output, activation scale of its input, gradient norms, batch-vs-population statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.diagnostics.power import (
    activation_scale,
    batch_population_distance,
    power_decomposition,
)
from normlab.models.inspection import forward_with_hooks
from normlab.norms import is_norm_layer
from normlab.norms.population import state_guard


@dataclass
class LayerRecord:
    """One norm layer's measurements, in forward order (depth)."""

    name: str
    depth: int
    metrics: dict[str, float] = field(default_factory=dict)


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost normlab norm layers of `model` (a NormAct counts once)."""
    found: list[tuple[str, nn.Module]] = []
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside or not is_norm_layer(module):
            continue
        found.append((name, module))
        inside.update(id(m) for m in module.modules())
    return found


@torch.no_grad()
def probe_layers(model: nn.Module, images: Tensor) -> list[LayerRecord]:
    """Forward the probe in eval mode and measure every 4-D norm layer (input and output)."""
    layers = norm_layers(model)
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    order: list[str] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name not in seen and inputs[0].dim() == 4:
                seen[name] = (inputs[0].detach(), output.detach())
                order.append(name)

        return record

    # A norm followed by its activation is measured at the norm's output (the activation input).
    handles = [
        getattr(module, "norm", module).register_forward_hook(hook(name)) for name, module in layers
    ]
    forward_with_hooks(model, images, handles)
    modules = dict(layers)
    records = []
    for depth, name in enumerate(order):
        inp, out = seen[name]
        metrics = {**power_decomposition(out), **activation_scale(inp)}
        core = getattr(modules[name], "norm", modules[name])
        running_mean, running_var = (
            getattr(core, "running_mean", None),
            getattr(core, "running_var", None),
        )
        if (
            isinstance(running_mean, Tensor)
            and isinstance(running_var, Tensor)
            and running_mean.shape[0] == inp.shape[1]
        ):
            metrics.update(batch_population_distance(inp, running_mean, running_var))
        records.append(LayerRecord(name, depth, metrics))
    return records


def gradient_norms(model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, float]:
    """L2 norm of each parameter tensor's gradient of the probe's cross-entropy (train mode,
    as in a training step; the model's gradients are left as they were)."""
    # a train-mode forward updates the running statistics: the whole state dict is restored
    with state_guard(model, mode=True, state_dict=True, grads=True):
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        return {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}


def summarize(records: list[LayerRecord]) -> dict[str, Any]:
    """Per-metric lists by depth plus the first/last layer values, for results.json."""
    if not records:
        return {}
    keys = sorted(records[0].metrics)
    summary: dict[str, Any] = {"layers": [r.name for r in records]}
    for key in keys:
        values = [r.metrics.get(key) for r in records]
        summary[key] = values
        summary[f"{key}_last"] = values[-1]
    return summary
