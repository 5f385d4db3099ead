"""The config's one source of truth: the typed schemas that conf/ files are based on."""

from normlab.config.schemas import field_names, register_schemas

__all__ = ["field_names", "register_schemas"]
