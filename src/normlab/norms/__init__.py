"""Normalization layers behind one registry: `build_norm(name, num_channels, activation, **params)`."""

from normlab.norms.base import (
    NormAct,
    NormLayer,
    is_norm_layer,
    notify_optimizer_step,
    zero_init_norm_,
)
from normlab.norms.registry import (
    NormFactory,
    NormSpec,
    available_norms,
    build_norm,
    get_norm_spec,
    norm_factory,
    norm_specs,
    register_norm,
    validate_norm_params,
)
from normlab.norms.virtual import set_virtual_batch_size

__all__ = [
    "NormAct",
    "NormFactory",
    "NormLayer",
    "NormSpec",
    "available_norms",
    "build_norm",
    "get_norm_spec",
    "is_norm_layer",
    "norm_factory",
    "norm_specs",
    "register_norm",
    "set_virtual_batch_size",
    "validate_norm_params",
    "notify_optimizer_step",
    "zero_init_norm_",
]
