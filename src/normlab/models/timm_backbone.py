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

from normlab.models.inspection import forward_with_hooks
from normlab.norms import NormFactory, get_norm_spec, is_norm_layer
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


def get_norm_spec_of(norm: NormFactory) -> object | None:
    """The registry spec of the method a factory builds (None for a hand-made factory)."""
    name = getattr(norm, "norm_name", None)
    return get_norm_spec(name) if name else None


def _is_activation(module: nn.Module) -> bool:
    try:
        return activation_name(module) not in (None, "identity")
    except ValueError:
        return False


@torch.no_grad()
def norm_activation_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(norm name, activation name) where an activation module consumes a norm layer's output
    directly, found by tracing one forward."""
    made_by: dict[int, tuple[str, int]] = {}
    keep: list[torch.Tensor] = []
    pairs: list[tuple[str, str]] = []
    handles = []

    def after_norm(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            made_by[id(output)] = (name, output._version)  # in-place ops (x += skip) bump it
            keep.append(output)

        return hook

    def before_act(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            source = made_by.get(id(inputs[0]))
            if source is not None and source[1] == inputs[0]._version:
                pairs.append((source[0], name))

        return hook

    for name, module in model.named_modules():
        if is_norm_layer(module):
            handles.append(module.register_forward_hook(after_norm(name)))
        elif _is_activation(module):
            handles.append(module.register_forward_pre_hook(before_act(name)))
    forward_with_hooks(model, example, handles)
    return pairs


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def fuse_norm_activation_pairs(model: nn.Module, norm: NormFactory, example: torch.Tensor) -> int:
    """For a method that applies its own activation (Proxy Norm, EvoNorm, FRN) in a family whose
    activations are separate modules (ResNet v1): rebuild each norm that feeds an activation
    with that activation and replace the activation by Identity. Fails, naming the modules,
    when an activation is shared by several norms or a norm feeds several activations."""
    pairs = norm_activation_pairs(model, example)
    norms = [n for n, _ in pairs]
    acts = [a for _, a in pairs]
    shared = sorted(
        {a for a in acts if acts.count(a) > 1} | {n for n in norms if norms.count(n) > 1}
    )
    if shared:
        raise ValueError(
            f"cannot fuse norm and activation: {', '.join(shared)} are shared; choose another model"
        )
    for norm_name, act_name in pairs:
        old = model.get_submodule(norm_name)
        channels = _channels_of(old)
        _replace(model, norm_name, norm(channels, activation_name(model.get_submodule(act_name))))
        _replace(model, act_name, nn.Identity())
    return len(pairs)


def _channels_of(module: nn.Module) -> int:
    for param in module.parameters():
        return int(param.shape[0])
    raise ValueError(f"cannot tell the channel count of {type(module).__name__}")


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
    if not fused and getattr(get_norm_spec_of(norm), "fuses_activation", False):
        example = torch.zeros(2, in_channels, 64, 64)
        fuse_norm_activation_pairs(model, norm, example)
    left = foreign_norm_layers(model)
    if left:
        raise ValueError(
            f"timm model '{name}' still has norm layers normlab did not build: {', '.join(left[:8])}"
            + (f" (+{len(left) - 8} more)" if len(left) > 8 else "")
            + "; this family does not take norm_layer everywhere, choose another model"
        )
    return model
