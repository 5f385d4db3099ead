"""Model names users type (`model=resnet20`) and how each is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normlab.config.schemas import MODEL_SCHEMAS, ResNetConfig, TimmConfig, field_names
from normlab.models.binding import bind_norms_to_convs, layers_needing_conv
from normlab.models.layers import conv_factory
from normlab.models.resnet import BasicBlock, Bottleneck, PreActBasicBlock, ResNet
from normlab.models.timm_backbone import build_timm_model
from normlab.norms import NormFactory


@dataclass(frozen=True)
class ResNetLayout:
    """Depths and widths of one named ResNet."""

    block: str  # "basic" or "bottleneck"
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    shortcut: str  # "A" zero-pad (He et al. CIFAR) or "B" 1x1 projection


RESNETS: dict[str, ResNetLayout] = {
    "resnet20": ResNetLayout("basic", (3, 3, 3), (16, 32, 64), "A"),
    "resnet56": ResNetLayout("basic", (9, 9, 9), (16, 32, 64), "A"),
    "resnet110": ResNetLayout("basic", (18, 18, 18), (16, 32, 64), "A"),
    "resnet18": ResNetLayout("basic", (2, 2, 2, 2), (64, 128, 256, 512), "B"),
    "resnet50": ResNetLayout("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "B"),
}


def available_models() -> list[str]:
    """Names `model=` accepts; `model=timm model.name=<timm name>` reaches any timm backbone."""
    return sorted([*RESNETS, "timm"])


def _resolve_stem(stem: str, image_size: int) -> str:
    if stem == "auto":
        return "cifar" if image_size <= 64 else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"model.stem must be auto, cifar or imagenet, got '{stem}'")
    return stem


def _check_keys(model_cfg: Mapping[str, Any], source: str) -> None:
    """Refuse keys that the schema of `source` models (config.schemas.MODEL_SCHEMAS) lacks."""
    valid = sorted(field_names(MODEL_SCHEMAS[source]))
    unknown = sorted(set(model_cfg) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown {source} model option(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )


def build_model(
    model_cfg: Mapping[str, Any],
    norm: NormFactory,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
) -> nn.Module:
    """Build the model that `model_cfg` names, with every norm layer from `norm`;
    `channels_last: true` lays it out channels_last. A key left out takes its schema's default
    (config.schemas.MODEL_SCHEMAS), the one place a default lives."""
    settings = model_settings(model_cfg)
    model = _build(settings, norm, num_classes, in_channels, image_size)
    if layers_needing_conv(model):
        bind_norms_to_convs(model, torch.zeros(2, in_channels, image_size, image_size))
    return to_channels_last(model) if settings.channels_last else model


def model_settings(model_cfg: Mapping[str, Any]) -> ResNetConfig | TimmConfig:
    """`model_cfg` as the schema of its `source` (normlab's ResNets or timm): unknown keys and
    sources are refused in one line naming the valid ones."""
    values = dict(model_cfg)
    source = values.get("source", "normlab")
    if source not in MODEL_SCHEMAS:
        raise ValueError(f"model.source must be {' or '.join(MODEL_SCHEMAS)}, got '{source}'")
    _check_keys(values, source)
    return MODEL_SCHEMAS[source](**values)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Lay `model`'s weights out channels_last and convert every 4-d input it is called with,
    so convolutions run in the faster layout end to end; the numbers stay those of NCHW."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_inputs_channels_last)
    return model


def _inputs_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, torch.Tensor) and a.dim() == 4
        else a
        for a in args
    )


def _build(
    settings: ResNetConfig | TimmConfig,
    norm: NormFactory,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> nn.Module:
    if isinstance(settings, TimmConfig):
        return build_timm_model(
            str(settings.name),
            norm,
            num_classes,
            in_channels,
            settings.activation,
            **dict(settings.timm_kwargs or {}),
        )
    name = settings.name
    if name not in RESNETS:
        raise ValueError(
            f"unknown model '{name}'; valid choices: {', '.join(available_models())} "
            "(timm backbones: model=timm model.name=<timm name>)"
        )
    layout = RESNETS[name]
    if settings.preact and layout.block != "basic":
        raise ValueError(f"model.preact=true is available for basic-block ResNets, not {name}")
    if settings.preact:
        block: type[nn.Module] = PreActBasicBlock
    else:
        block = BasicBlock if layout.block == "basic" else Bottleneck
    return ResNet(
        block,
        layout.depths,
        layout.widths,
        num_classes,
        norm,
        conv_factory(bool(settings.weight_standardization)),
        in_channels=in_channels,
        stem=_resolve_stem(settings.stem, image_size),
        activation=settings.activation,
        shortcut=settings.shortcut or layout.shortcut,
        zero_init_last=bool(settings.zero_init_last),
    )
