"""Imports every norm family module of this package so that its methods are registered.

A family is any module of normlab.norms that registers methods; new families need no edit here.
"""

import importlib
import pkgutil

import normlab.norms as _package

_INFRASTRUCTURE = {"activations", "base", "catalog", "checks", "families", "registry", "virtual"}

for _info in pkgutil.iter_modules(_package.__path__):
    if _info.name not in _INFRASTRUCTURE and not _info.name.startswith("_"):
        importlib.import_module(f"{_package.__name__}.{_info.name}")
