"""build_run(cfg, output_dir): a run's parts from its composed config, ready to fit.

The experiment (data, model, LightningModule: normlab.job.experiment) and the harness that trains
it (callbacks, loggers, Trainer, the checkpoint to resume), checked against this machine
first: normlab.train fits what it returns. Evaluation builds only the experiment.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig
from torch import nn

from normlab.data import ImageDataModule
from normlab.job.callbacks import build_callbacks
from normlab.job.checkpoint_io import AtomicCheckpointIO
from normlab.job.experiment import Experiment, build_experiment
from normlab.job.lit import Classifier
from normlab.job.resume import csv_version, resume_checkpoint
from normlab.job.spec import RunSpec, run_spec
from normlab.platform.environment import (
    check_devices,
    cluster_plugins,
    job_overrides,
    process_rank,
    trainer_args,
    under_slurm,
)
from normlab.platform.provenance import provenance
from normlab.results import RunResult
from normlab.run_folder import CSV_DIR, PROFILER_NAME, TENSORBOARD_DIR


@dataclass
class Harness:
    """How a run trains: its callbacks, loggers and Trainer, and the checkpoint it resumes."""

    callbacks: list[L.Callback]
    loggers: list[Logger]
    trainer: L.Trainer
    ckpt_path: str | None  # the checkpoint to resume from (normlab.job.resume)
    resume_fallback: str | None  # why last.ckpt was not resumed from, when it could not be read


@dataclass
class Run:
    """A run's parts, nothing trained yet: what is trained (`experiment`) and how (`harness`).
    `close` ends what the loggers started (a W&B run): call it once the run is over, failed
    or not."""

    experiment: Experiment
    harness: Harness

    @property
    def datamodule(self) -> ImageDataModule:
        return self.experiment.datamodule

    @property
    def model(self) -> nn.Module:
        return self.experiment.model

    @property
    def module(self) -> Classifier:
        return self.experiment.module

    @property
    def spec(self) -> RunSpec:
        return self.experiment.spec

    @property
    def target(self) -> ImageDataModule | None:
        return self.experiment.target

    @property
    def callbacks(self) -> list[L.Callback]:
        return self.harness.callbacks

    @property
    def loggers(self) -> list[Logger]:
        return self.harness.loggers

    @property
    def trainer(self) -> L.Trainer:
        return self.harness.trainer

    @property
    def ckpt_path(self) -> str | None:
        return self.harness.ckpt_path

    @property
    def resume_fallback(self) -> str | None:
        return self.harness.resume_fallback

    def close(self, failed: bool = False) -> None:
        """Finish the loggers that need it (W&B), with a failure exit code when `failed`."""
        close_loggers(self.loggers, failed)


def build_run(
    cfg: DictConfig,
    output_dir: Path,
    verbose: bool = False,
    spec: RunSpec | None = None,
    devices_checked: bool = False,
) -> Run:
    """Check the config against this machine and the data, then build the experiment
    (normlab.job.experiment) and the harness that trains it, writing into `output_dir`; `verbose`
    prints the effective learning rate. `spec`: the run's spec when the caller already read it
    (normlab.job.spec.run_spec); `devices_checked`: the caller already refused a machine without
    the devices asked for."""
    quiet_lightning()
    spec = spec or run_spec(cfg)
    if not devices_checked:
        check_devices(cfg.trainer)
    check_max_epochs(cfg.trainer.get("max_epochs"))
    check_logger_packages(cfg.logger)
    experiment = build_experiment(cfg, spec)
    check_precise_bn_samples(int(cfg.precise_bn.num_samples), experiment.datamodule)
    for num_samples in cfg.precise_bn.compare_samples:
        check_precise_bn_samples(
            int(num_samples), experiment.datamodule, "precise_bn.compare_samples"
        )
    if verbose:
        print(spec.lr_line())
    return Run(experiment, build_harness(cfg, spec, output_dir))


def build_harness(cfg: DictConfig, spec: RunSpec, output_dir: Path) -> Harness:
    """The callbacks, loggers and Trainer of a run writing into `output_dir`, and the
    checkpoint it resumes from (normlab.job.resume)."""
    resume_point = resume_checkpoint(output_dir, cfg.ckpt_path, bool(cfg.resume))
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    callbacks = build_callbacks(spec, output_dir, cfg.callbacks.extra, slurm=under_slurm())
    loggers = build_loggers(cfg, output_dir)
    try:
        args = trainer_args(cfg.trainer)
        plugins = [*cluster_plugins(), *(args.pop("plugins", None) or [])]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        args["profiler"] = run_profiler(args.get("profiler"), output_dir)
        # callbacks.checkpoint.enabled=false means no checkpoint at all: without a ModelCheckpoint
        # of normlab's, Lightning would add its own, writing epoch=*.ckpt into the logger's folder.
        args.setdefault(
            "enable_checkpointing", any(isinstance(c, ModelCheckpoint) for c in callbacks)
        )
        trainer = L.Trainer(
            **args,
            plugins=plugins or None,
            logger=loggers or False,
            callbacks=callbacks,
            default_root_dir=str(output_dir),
            enable_model_summary=False,
            enable_progress_bar=cfg.callbacks.progress != "none",
        )
    except BaseException:
        close_loggers(loggers, failed=True)
        raise
    return Harness(
        callbacks=callbacks,
        loggers=loggers,
        trainer=trainer,
        ckpt_path=resume_point.path,
        resume_fallback=resume_point.fallback,
    )


def run_profiler(name: Any, output_dir: Path) -> Any:
    """`trainer.profiler=simple|advanced|pytorch` (debug=profiler) as Lightning's profiler of that
    name writing its report into the run folder, not only to the console; any other value
    (null, a profiler object) goes to the Trainer as it is."""
    from lightning.pytorch import profilers

    classes = {
        "simple": profilers.SimpleProfiler,
        "advanced": profilers.AdvancedProfiler,
        "pytorch": profilers.PyTorchProfiler,
    }
    if isinstance(name, str) and name in classes:
        return classes[name](dirpath=str(output_dir), filename=PROFILER_NAME)
    return name


def run_axes(cfg: DictConfig, spec: RunSpec | None = None) -> RunResult:
    """The hyper-parameters a sweep varies, as results.json records them (`spec`: the run's
    spec when the caller already read it)."""
    spec = spec or run_spec(cfg)
    devices = cfg.trainer.get("devices", 1)
    return {
        "norm": spec.norm,
        "norm_params": spec.norm_params,
        "momentum": spec.norm_params.get("momentum"),
        "batch_size": spec.batch_size,
        "virtual_devices": spec.virtual_devices,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "devices": devices if isinstance(devices, int) else str(devices),
        "norm_weight_decay": str(cfg.optim.norm_weight_decay).lower(),
        "base_lr": spec.base_lr,
        "precise_bn_samples": int(cfg.precise_bn.num_samples),
        "frozen_bn_last_epochs": int(cfg.frozen_bn.last_epochs),
        "eval_stats": str(cfg.eval_stats),
        "eval_alpha": float(cfg.eval_alpha),
        "preset": cfg.preset,
        "overrides": job_overrides(),
        "precision": str(cfg.trainer.get("precision", "32-true")),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "memory_format": "channels_last" if cfg.model.channels_last else "contiguous",
        "provenance": dict(provenance(cfg.trainer.get("accelerator", "cpu"))),
    }


def check_max_epochs(max_epochs: Any) -> None:
    """Refuse, before anything is built, an epoch count that trains nothing or that Lightning
    would reject deep inside the fit (it accepts -1 for no limit, with max_steps)."""
    if max_epochs is None or max_epochs == -1:
        return
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(
            f"trainer.max_epochs must be a positive integer (or -1: no limit, with "
            f"trainer.max_steps), got {max_epochs!r}"
        )


def check_precise_bn_samples(
    num_samples: int, datamodule: ImageDataModule, key: str = "precise_bn.num_samples"
) -> None:
    """Refuse, before training, a PreciseBN sample count the training set cannot supply (it
    failed only at the first validation, after an epoch of work)."""
    available = len(datamodule.train_set)  # type: ignore[arg-type]
    if num_samples > available:
        raise ValueError(
            f"{key}={num_samples} exceeds the {available} training samples of "
            f"data={datamodule.name}; use at most {available}"
        )


def quiet_lightning() -> None:
    """One copy of each Lightning message (Hydra's root handler already prints them), no tips."""
    logging.getLogger("lightning.pytorch").propagate = False
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
    # a resumed run writes into its own checkpoints folder on purpose; under SLURM normlab's
    # launcher starts the tasks itself (one per rank), so srun is not needed
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system")


def check_logger_packages(logger_cfg: DictConfig) -> None:
    """Refuse, before any data is read, a logger whose package is missing: TensorBoard writes
    through tensorboardX (a dependency of normlab) or the tensorboard package."""
    if not logger_cfg.tensorboard:
        return
    for module in ("tensorboardX", "tensorboard"):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue
    raise ModuleNotFoundError(
        "logger=tensorboard needs the tensorboardX package, which is not installed: "
        "pip install tensorboardX (or use logger=csv)"
    )


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """CSV, TensorBoard and W&B loggers writing into the run folder (W&B on rank 0 only)."""
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(
            CSVLogger(save_dir=str(output_dir), name=CSV_DIR, version=csv_version(output_dir))
        )
    if cfg.logger.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(
            TensorBoardLogger(save_dir=str(output_dir), name=TENSORBOARD_DIR, version="")
        )
    if cfg.logger.wandb and process_rank() == 0:
        from normlab.platform.wandb_logging import build_wandb_logger

        wandb_logger = build_wandb_logger(cfg, output_dir)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def close_loggers(loggers: list[Logger], failed: bool = False) -> None:
    """End what a logger started beyond Lightning's own teardown: the W&B run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            from normlab.platform.wandb_logging import finish

            finish(logger, failed)
