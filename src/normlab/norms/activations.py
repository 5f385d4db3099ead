"""Activation functions by name, so configs and norm factories can name them."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "silu": lambda: nn.SiLU(inplace=False),
    "swish": lambda: nn.SiLU(inplace=False),
    "gelu": lambda: nn.GELU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": lambda: nn.ELU(),
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
    "identity": lambda: nn.Identity(),
}

# torch/timm activation classes -> our names (used when timm hands us an act_layer class).
_CLASS_TO_NAME: dict[str, str] = {
    "ReLU": "relu",
    "SiLU": "silu",
    "Swish": "silu",
    "GELU": "gelu",
    "LeakyReLU": "leaky_relu",
    "ELU": "elu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Identity": "identity",
}


def available_activations() -> list[str]:
    """Names accepted wherever an activation is chosen by name."""
    return sorted(_ACTIVATIONS)


def make_activation(name: str | None) -> nn.Module:
    """Build the activation module called `name` (None gives Identity)."""
    if name is None:
        return nn.Identity()
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation '{name}'; valid choices: {', '.join(available_activations())}"
        )
    return _ACTIVATIONS[key]()


def activation_name(act: object) -> str | None:
    """Our name for an activation given as a name, a class, a module or None."""
    if act is None:
        return None
    if isinstance(act, str):
        key = act.lower().replace("-", "_")
        if key in ("", "none"):
            return None
        make_activation(key)  # validates
        return key
    cls = act if isinstance(act, type) else type(act)
    name = _CLASS_TO_NAME.get(cls.__name__)
    if name is None:
        raise ValueError(
            f"activation {cls.__name__} has no normlab equivalent; supported: "
            f"{', '.join(sorted(_CLASS_TO_NAME))}"
        )
    return name
