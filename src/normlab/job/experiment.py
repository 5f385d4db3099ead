"""build_experiment(cfg): what a run trains, apart from how it runs.

The data module, the model with its norm, the LightningModule that trains it and the shifted
domain of `precise_bn.data`, from the composed config. No Trainer, callback, logger or run
folder: normlab.job.build adds those (the harness) for training; eval.py and choose_alpha build
only this, with the weights of a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.data import ImageDataModule, build_datamodule
from normlab.job.lit import Classifier
from normlab.job.spec import RunSpec, run_spec
from normlab.models import build_model
from normlab.norms import norm_factory, set_virtual_batch_size


@dataclass
class Experiment:
    """What is trained: data, model, the LightningModule around the model, and the spec."""

    datamodule: ImageDataModule
    model: nn.Module
    module: Classifier
    spec: RunSpec  # norm, batch, devices, global batch and learning rate (normlab.job.spec)
    target: ImageDataModule | None = None  # the shifted domain of precise_bn.data


def build_experiment(cfg: DictConfig, spec: RunSpec | None = None) -> Experiment:
    """Seed, then build the run's data (set up for fit), model and LightningModule; `spec`:
    the run's spec when the caller already read it (normlab.job.spec.run_spec). A bad value is
    refused in one line before anything is trained."""
    spec = spec or run_spec(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    norm = norm_factory(spec.norm, **spec.norm_params)
    batch_size, virtual = spec.batch_size, spec.virtual_devices
    datamodule = build_datamodule(cfg.data, batch_size, seed=int(cfg.seed), virtual_devices=virtual)
    datamodule.setup("fit")
    model = build_model(
        cfg.model, norm, datamodule.num_classes, datamodule.in_channels, datamodule.image_size
    )
    check_norm_batch_size(model, batch_size)
    set_virtual_batch_size(model, batch_size if virtual > 1 else None)
    target = build_target_domain(cfg.data, cfg.precise_bn, int(cfg.seed), datamodule)
    module = Classifier(
        model,
        datamodule.num_classes,
        cfg.optim,
        cfg.sched,
        spec.lr,
        float(cfg.divergence.loss_threshold),
    )
    return Experiment(
        datamodule=datamodule,
        model=model,
        module=module,
        spec=spec,
        target=target,
    )


def check_norm_batch_size(model: nn.Module, batch_size: int) -> None:
    """Ask every layer that can tell (normlab norms) whether it trains at this per-device batch."""
    for module in model.modules():
        check = getattr(module, "check_batch_size", None)
        if callable(check):
            check(batch_size)


def build_target_domain(
    data_cfg: DictConfig, precise_bn_cfg: DictConfig, seed: int, source: ImageDataModule
) -> ImageDataModule | None:
    """The shifted-domain data set of `precise_bn.data` (None when empty): the run's data
    with those changes, normalized like the source, so the shift is not undone by its own
    input statistics."""
    changes = OmegaConf.to_container(precise_bn_cfg.data, resolve=True)
    if not changes:
        return None
    merged = {**OmegaConf.to_container(data_cfg, resolve=True), **changes}  # type: ignore[dict-item]
    target = build_datamodule(merged, int(precise_bn_cfg.batch_size), seed=seed)
    target.setup("fit")
    target.collate = source.collate
    return target
