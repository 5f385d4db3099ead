"""Imports every norm family so that its methods are registered."""

from normlab.norms import batch, group, identity  # noqa: F401
