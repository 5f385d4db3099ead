"""Any timm backbone with every norm layer built by normlab's norm factory.

timm families call their `norm_layer` in one of two ways: as a plain norm (ResNet v1:
`norm_layer(C)`, the activation a separate module) or as a fused norm+activation
(ResNetV2, EfficientNet, RegNet, ...: `norm_layer(C, apply_act=...)`). A probe build of
the default model tells which; the factory is wrapped accordingly, and after the build any
norm layer that is not normlab's fails the build with the module's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from normlab.norms import NormFactory, is_norm_layer
from normlab.norms.activations import activation_name

# Base classes of the norm layers timm and torch might leave behind.
_FOREIGN_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def uses_fused_norm_act(name: str, **kwargs: Any) -> bool:
    """True when the timm model `name` builds its norms as fused norm+activation layers."""
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **kwargs)
    return any(type(m).__module__.startswith("timm.layers.norm_act") for m in probe.modules())


def _plain_adapter(norm: NormFactory) -> Callable[..., nn.Module]:
    def norm_layer(
        num_features: int, device: Any = None, dtype: Any = None, **unused: Any
    ) -> nn.Module:
        _reject_unknown_kwargs(unused)
        return norm(num_features, None)

    return norm_layer


def _fused_adapter(norm: NormFactory, default_act: str | None) -> Callable[..., nn.Module]:
    def norm_act_layer(
        num_features: int,
        apply_act: bool = True,
        act_layer: Any = None,
        act_kwargs: Any = None,
        inplace: bool = True,
        drop_layer: Any = None,
        device: Any = None,
        dtype: Any = None,
        **unused: Any,
    ) -> nn.Module:
        _reject_unknown_kwargs(unused)
        if drop_layer is not None:
            raise ValueError("normlab norms do not support timm's drop_layer inside a norm layer")
        act = (
            (activation_name(act_layer) if act_layer is not None else default_act)
            if apply_act
            else None
        )
        return norm(num_features, act)

    return norm_act_layer


def _reject_unknown_kwargs(unused: dict[str, Any]) -> None:
    # timm passes a few keywords that only concern its own layers (eps, momentum, groups).
    ignored = {"eps", "momentum", "num_groups", "group_size", "affine", "track_running_stats"}
    unknown = sorted(set(unused) - ignored)
    if unknown:
        raise ValueError(
            f"timm asked the norm layer for unsupported argument(s): {', '.join(unknown)}"
        )


def foreign_norm_layers(model: nn.Module) -> list[str]:
    """Names of norm layers in `model` that normlab's factory did not build."""
    found: list[str] = []
    ours: set[int] = set()
    for name, module in model.named_modules():
        if is_norm_layer(module):
            ours.update(id(m) for m in module.modules())
        elif isinstance(module, _FOREIGN_NORM_TYPES) and id(module) not in ours:
            found.append(f"{name} ({type(module).__name__})")
    return found


def build_timm_model(
    name: str,
    norm: NormFactory,
    num_classes: int,
    in_channels: int,
    activation: str = "relu",
    **timm_kwargs: Any,
) -> nn.Module:
    """timm's `name` from scratch with every norm layer from `norm`; fails if one is left."""
    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:10]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model '{name}'{hint}")
    fused = uses_fused_norm_act(name, num_classes=num_classes, in_chans=in_channels, **timm_kwargs)
    norm_layer = _fused_adapter(norm, activation) if fused else _plain_adapter(norm)
    model = timm.create_model(
        name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        norm_layer=norm_layer,
        act_layer=activation,
        **timm_kwargs,
    )
    left = foreign_norm_layers(model)
    if left:
        raise ValueError(
            f"timm model '{name}' still has norm layers normlab did not build: {', '.join(left[:8])}"
            + (f" (+{len(left) - 8} more)" if len(left) > 8 else "")
            + "; this family does not take norm_layer everywhere, choose another model"
        )
    return model
