"""Bind norm layers that need their preceding convolution (CBN) to it, by tracing a forward."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from normlab.models.inspection import forward_with_hooks


def layers_needing_conv(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer with `needs_conv = True`."""
    return [(n, m) for n, m in model.named_modules() if getattr(m, "needs_conv", False)]


@torch.no_grad()
def bind_norms_to_convs(model: nn.Module, example: Tensor) -> int:
    """Find for each layer needing a conv the Conv2d whose output is exactly its input, and bind
    it. Fails, naming the layers, where no conv directly precedes (e.g. pre-activation blocks,
    whose first norm sees the residual sum). Returns the number of layers bound."""
    targets = layers_needing_conv(model)
    if not targets:
        return 0
    produced: dict[int, nn.Conv2d] = {}
    keep_alive: list[Tensor] = []
    found: dict[str, nn.Conv2d] = {}

    def conv_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        produced[id(output)] = module  # type: ignore[assignment]
        keep_alive.append(output)

    def norm_hook(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            conv = produced.get(id(inputs[0]))
            if conv is not None:
                found.setdefault(name, conv)

        return hook

    handles = [
        m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    handles += [m.register_forward_pre_hook(norm_hook(n)) for n, m in targets]
    forward_with_hooks(model, example, handles)
    missing = [name for name, _ in targets if name not in found]
    listed = f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
    if any(getattr(m, "no_conv", "error") != "naive" for n, m in targets if n in missing):
        raise ValueError(
            f"cbn needs a convolution right before each norm layer, but none precedes {listed} "
            "(pre-activation blocks normalize the residual sum); use a post-activation model "
            "(model.preact=false) or norm.no_conv=naive"
        )
    if missing:
        warnings.warn(
            f"cbn: no convolution right before {len(missing)} layer(s) ({listed}); they average "
            "past statistics without compensation (norm.no_conv=naive)",
            stacklevel=2,
        )
    for name, module in targets:
        if name in found:
            module.bind_conv(found[name])  # type: ignore[operator]
        else:
            module.mark_uncompensated()  # type: ignore[operator]
    return len(targets)
