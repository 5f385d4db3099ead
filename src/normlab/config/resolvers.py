"""normlab's OmegaConf resolvers, registered before any config of conf/ is composed (train.py,
and hydra_plugins.normlab_schemas for every other way of composing)."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """`${normlab_uid:}`: a random suffix, cached so one run resolves it once.
    `${normlab_precision:<precision>,<accelerator>}`: that precision where this machine runs it
    natively, else 32-true (normlab.platform.precision.native_precision)."""
    if not OmegaConf.has_resolver("normlab_uid"):
        OmegaConf.register_new_resolver("normlab_uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("normlab_precision"):
        from normlab.platform.precision import native_precision

        OmegaConf.register_new_resolver("normlab_precision", native_precision, use_cache=True)
