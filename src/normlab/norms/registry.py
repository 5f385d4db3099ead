"""The norm registry: one name per method, validated parameters, one factory for models.

A method is one module of normlab.norms holding its layer class and one builder registered
with `@register_norm`. Everything else about the method derives from that registration: its
parameters and defaults (the builder's keyword defaults), what it is (the layer class's
declarations: `batch_dependent`, `fuses_activation`, `supports_eval_alpha`), its
conf/norm/<name>.yaml and README row (normlab.norms.catalog) and the parameters the tests
build it with (`test_params`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normlab.norms.activations import activation_name
from normlab.norms.base import NormAct, NormLayer

NormBuilder = Callable[..., nn.Module]
NormFactory = Callable[[int, str | None], nn.Module]


@dataclass(frozen=True)
class NormSpec:
    """A registered method: its builder, the layer class the builder returns, its parameters
    with defaults, the one-line `summary` the README's method table shows, and `test_params`:
    overrides of the defaults under which a layer of 4 channels trains on batches of 2 samples
    with every part of its formula active (what the registry-driven tests build).

    `batch_dependent` and `fuses_activation` are the layer class's own declarations.
    """

    name: str
    builder: NormBuilder
    layer: type[NormLayer]
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    test_params: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_dependent(self) -> bool:
        """Whether the method normalizes over the batch (declared by its layer class)."""
        return bool(self.layer.batch_dependent)

    @property
    def fuses_activation(self) -> bool:
        """Whether the layer applies the following activation itself (declared by its class)."""
        return bool(self.layer.fuses_activation)

    @property
    def supports_eval_alpha(self) -> bool:
        """Whether evaluation implements example weighing (declared by its layer class)."""
        return bool(getattr(self.layer, "supports_eval_alpha", False))


_REGISTRY: dict[str, NormSpec] = {}
COMPILE = "compile"  # the parameter every method takes: wrap the built layer in torch.compile


def register_norm(
    name: str, *, summary: str, test_params: dict[str, Any] | None = None
) -> Callable[[NormBuilder], NormBuilder]:
    """Register a builder `(num_channels, [activation,] **params) -> Layer` under `name`.

    The builder's keyword defaults are the method's parameters, plus `compile` (False), which
    every method takes (see `build_norm`). Its return annotation names the NormLayer class it
    builds, whose class attributes say what the method is (`batch_dependent`,
    `fuses_activation`, ...). A layer that fuses the activation has a builder taking an
    `activation` keyword; otherwise the registry appends the activation. `summary` is the
    method's row text in the README table; `test_params` override defaults in the tests.
    """

    def decorate(builder: NormBuilder) -> NormBuilder:
        if name in _REGISTRY:
            raise ValueError(f"norm '{name}' is registered twice")
        if not summary or "|" in summary or "\n" in summary:
            raise ValueError(
                f"norm '{name}': summary must be one line without '|', got {summary!r}"
            )
        layer = _layer_class(name, builder)
        signature = inspect.signature(builder)
        takes_activation = "activation" in signature.parameters
        if takes_activation != layer.fuses_activation:
            raise ValueError(
                f"norm '{name}': {layer.__name__}.fuses_activation is {layer.fuses_activation}, "
                f"so its builder must {'' if layer.fuses_activation else 'not '}take an "
                "`activation` keyword"
            )
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "activation"
        }
        if COMPILE in defaults:
            raise ValueError(f"norm '{name}': '{COMPILE}' is a registry parameter of every norm")
        defaults[COMPILE] = False
        unknown = sorted(set(test_params or {}) - set(defaults))
        if unknown:
            raise ValueError(f"norm '{name}': test_params {', '.join(unknown)} are no parameters")
        _REGISTRY[name] = NormSpec(
            name=name,
            builder=builder,
            layer=layer,
            summary=summary,
            defaults=defaults,
            test_params=dict(test_params or {}),
        )
        return builder

    return decorate


def _layer_class(name: str, builder: NormBuilder) -> type[NormLayer]:
    """The NormLayer class `builder` is annotated to return."""
    try:
        returned = inspect.signature(builder, eval_str=True).return_annotation
    except NameError as error:
        raise ValueError(
            f"norm '{name}': cannot resolve the builder's annotations: {error}"
        ) from error
    if not (isinstance(returned, type) and issubclass(returned, NormLayer)):
        raise ValueError(
            f"norm '{name}': annotate the builder's return type with the NormLayer class it "
            f"builds (it declares batch_dependent, fuses_activation), got {returned!r}"
        )
    return returned


def available_norms() -> list[str]:
    """The names `norm=<name>` accepts."""
    _load_families()
    return sorted(_REGISTRY)


def norm_specs() -> list[NormSpec]:
    """Every registered method's spec, by name."""
    return [_REGISTRY[name] for name in available_norms()]


def get_norm_spec(name: str) -> NormSpec:
    """The registered spec of `name`, or a ValueError naming the valid choices."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown norm '{name}'; valid choices: {', '.join(available_norms())}")
    return _REGISTRY[name]


def eval_alpha_norms() -> list[str]:
    """The methods whose layers implement example-weighed inference (`eval_alpha`)."""
    return [spec.name for spec in norm_specs() if spec.supports_eval_alpha]


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
