"""The norm registry: one name per method, validated parameters, one factory for models."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normlab.norms.activations import activation_name
from normlab.norms.base import NormAct

NormBuilder = Callable[..., nn.Module]
NormFactory = Callable[[int, str | None], nn.Module]


@dataclass(frozen=True)
class NormSpec:
    """A registered method: its builder, its parameters with defaults, and what it is."""

    name: str
    builder: NormBuilder
    defaults: dict[str, Any] = field(default_factory=dict)
    batch_dependent: bool = False
    fuses_activation: bool = False
    summary: str = ""


_REGISTRY: dict[str, NormSpec] = {}
COMPILE = "compile"  # the parameter every method takes: wrap the built layer in torch.compile


def register_norm(
    name: str,
    *,
    batch_dependent: bool,
    summary: str,
    fuses_activation: bool = False,
) -> Callable[[NormBuilder], NormBuilder]:
    """Register a builder `(num_channels, [activation,] **params) -> nn.Module` under `name`.

    The builder's keyword defaults are the method's parameters, plus `compile` (False), which
    every method takes (see `build_norm`). A builder that fuses the activation takes an
    `activation` keyword; otherwise the registry appends it.
    """

    def decorate(builder: NormBuilder) -> NormBuilder:
        if name in _REGISTRY:
            raise ValueError(f"norm '{name}' is registered twice")
        signature = inspect.signature(builder)
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "activation"
        }
        if COMPILE in defaults:
            raise ValueError(f"norm '{name}': '{COMPILE}' is a registry parameter of every norm")
        defaults[COMPILE] = False
        _REGISTRY[name] = NormSpec(
            name=name,
            builder=builder,
            defaults=defaults,
            batch_dependent=batch_dependent,
            fuses_activation=fuses_activation,
            summary=summary,
        )
        return builder

    return decorate


def available_norms() -> list[str]:
    """The names `norm=<name>` accepts."""
    _load_families()
    return sorted(_REGISTRY)


def get_norm_spec(name: str) -> NormSpec:
    """The registered spec of `name`, or a ValueError naming the valid choices."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown norm '{name}'; valid choices: {', '.join(available_norms())}")
    return _REGISTRY[name]


def validate_norm_params(name: str, params: dict[str, Any]) -> NormSpec:
    """Check that every parameter is one `name` takes; return its spec."""
    spec = get_norm_spec(name)
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        own = ", ".join(sorted(k for k in spec.defaults if k != COMPILE)) or "(none)"
        valid = f"{own} (and {COMPILE}, which every norm takes)"
        raise ValueError(
            f"norm '{name}' got unknown parameter(s) {', '.join(unknown)}; valid parameters: {valid}"
        )
    return spec


def build_norm(
    name: str, num_channels: int, activation: str | None = None, **params: Any
) -> nn.Module:
    """Build one `name` layer for NCHW input with `num_channels`, followed by `activation`.

    `compile=True` compiles the built module's call in place (`nn.Module.compile`, torch.compile
    with dynamic=False, which recompiles per input shape): the module keeps its type, attributes,
    parameters and state dict, so model surgery and `batch_dependent` work as before. Layers
    then run their plain formula, which inductor fuses (their eager fast paths are skipped while
    compiling). A deep copy of a compiled layer runs eagerly.
    """
    spec = validate_norm_params(name, params)
    if not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(
            f"norm '{name}': num_channels must be a positive int, got {num_channels!r}"
        )
    compile_layer = params.pop(COMPILE, False)
    if not isinstance(compile_layer, bool):
        raise ValueError(f"norm '{name}': compile must be true or false, got {compile_layer!r}")
    act = activation_name(activation)
    if spec.fuses_activation:
        layer = spec.builder(num_channels, activation=act, **params)
    else:
        layer = spec.builder(num_channels, **params)
        layer = layer if act is None else NormAct(layer, act)
    if compile_layer:
        layer.compile(dynamic=False)
    return layer


def norm_factory(name: str, **params: Any) -> NormFactory:
    """A `(num_channels, activation) -> nn.Module` factory for models; validates eagerly."""
    validate_norm_params(name, params)

    def make(num_channels: int, activation: str | None = None) -> nn.Module:
        return build_norm(name, num_channels, activation, **params)

    make.norm_name = name  # type: ignore[attr-defined]
    make.norm_params = dict(params)  # type: ignore[attr-defined]
    return make


def _load_families() -> None:
    # Importing the family modules runs their @register_norm decorators.
    from normlab.norms import families  # noqa: F401
