"""Activation, gradient and failure-mode diagnostics (Proxy Norm's power plots, "Understanding BN")."""

from normlab.diagnostics.power import (
    activation_scale,
    batch_population_distance,
    power_decomposition,
)
from normlab.diagnostics.probe import gradient_norms, probe_layers, summarize

__all__ = [
    "batch_population_distance",
    "activation_scale",
    "gradient_norms",
    "power_decomposition",
    "probe_layers",
    "summarize",
]
