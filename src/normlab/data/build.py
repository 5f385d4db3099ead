"""From the `data` config group to a DataModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from normlab.config.schemas import DATA_SCHEMAS, ShiftConfig, field_names
from normlab.data.base import ImageDataModule, InMemoryDataModule, LoaderOptions
from normlab.data.cifar import CifarDataModule
from normlab.data.corruptions import corrupt
from normlab.data.digits import DigitsDataModule
from normlab.data.folder import AUGMENTS, FolderStreamDataModule, FolderTensorDataModule
from normlab.data.shared import default_cache_dir
from normlab.data.synthetic import SyntheticDataModule


def available_datasets() -> list[str]:
    """Names `data.name` accepts."""
    return sorted(DATA_SCHEMAS)


def build_datamodule(
    data_cfg: Mapping[str, Any], batch_size: int, seed: int = 0, virtual_devices: int = 1
) -> ImageDataModule:
    """The DataModule `data_cfg` describes, serving per-device batches of `batch_size`
    (training batches of batch_size x virtual_devices, one chunk per virtual device)."""
    cfg = dict(data_cfg)
    name = cfg.pop("name", None)
    if name not in DATA_SCHEMAS:
        raise ValueError(
            f"unknown data set '{name}'; valid choices: {', '.join(available_datasets())}"
        )
    valid = sorted(set(field_names(DATA_SCHEMAS[name], ShiftConfig)) - {"name"})
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(
            f"data={name} got unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    corruption, severity = cfg.pop("corruption", None), int(cfg.pop("severity", 3) or 3)
    module = _build(name, cfg, batch_size, seed, virtual_devices)
    if corruption:
        if not isinstance(module, InMemoryDataModule):
            raise ValueError(
                f"data.corruption needs an in-memory data set, not data={name} with augment=imagenet"
            )
        corrupt(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), corruption, severity)  # validates now
        module.corruption, module.severity = corruption, severity
    return module


def _build(
    name: str, data_cfg: dict[str, Any], batch_size: int, seed: int, virtual_devices: int
) -> ImageDataModule:
    options = LoaderOptions(
        batch_size=int(batch_size),
        virtual_devices=int(virtual_devices),
        eval_batch_size=data_cfg.pop("eval_batch_size", None),
        num_workers=int(data_cfg.pop("num_workers", 0) or 0),
        train_samples=data_cfg.pop("train_samples", None),
        val_samples=data_cfg.pop("val_samples", None),
        holdout_samples=int(data_cfg.pop("holdout_samples", 0) or 0),
        seed=seed,
    )
    if name == "digits":
        return DigitsDataModule(options, **data_cfg)
    if name in ("cifar10", "cifar100"):
        return CifarDataModule(options, classes=int(name[5:]), **data_cfg)
    if name == "synthetic":
        return SyntheticDataModule(options, **data_cfg)
    augment = data_cfg.pop("augment", "cifar")
    if augment not in AUGMENTS:
        raise ValueError(f"data.augment must be one of {', '.join(AUGMENTS)}, got '{augment}'")
    if not data_cfg.get("root"):
        raise ValueError(f"data={name} needs data.root=<folder with train/ and val/ or test/>")
    module: FolderStreamDataModule | FolderTensorDataModule
    if augment == "imagenet":
        data_cfg.pop("cache_dir", None)
        module = FolderStreamDataModule(options, **data_cfg)
    else:
        data_cfg.pop("image_size", None)
        cache_dir = data_cfg.pop("cache_dir", None) or str(default_cache_dir() / "decoded")
        module = FolderTensorDataModule(
            options, data_cfg["root"], cache_dir, augment=augment == "cifar"
        )
    module.name = name  # folder or imagenet (data.name), as its messages name it
    return module
