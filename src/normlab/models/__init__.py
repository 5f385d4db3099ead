"""Models built from a norm factory: `build_model(model_cfg, norm_factory, num_classes, ...)`."""

from normlab.models.registry import available_models, build_model

__all__ = ["available_models", "build_model"]
