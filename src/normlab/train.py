"""run(cfg): one training job from a composed config to results.json."""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from normlab.callbacks import MetricHistory, ThroughputMonitor
from normlab.console import print_config
from normlab.data import ImageDataModule, build_datamodule
from normlab.lit import Classifier
from normlab.models import build_model
from normlab.norms import norm_factory
from normlab.norms.population import iter_population_layers
from normlab.optim import scaled_lr
from normlab.results import write_results
from normlab.stats.evaluate import domain_shift_accuracy, train_test_gap
from normlab.stats.setup import diagnostics_callback, statistics_callbacks


def norm_params(norm_cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """The norm's name and its parameters from the `norm` config group."""
    params = OmegaConf.to_container(norm_cfg, resolve=True)
    assert isinstance(params, dict)
    name = params.pop("name")
    return str(name), {str(k): v for k, v in params.items()}


def run_axes(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters a sweep varies, as results.json records them."""
    name, params = norm_params(cfg.norm)
    devices = cfg.trainer.get("devices", 1)
    return {
        "norm": name,
        "norm_params": params,
        "momentum": params.get("momentum"),
        "batch_size": int(cfg.batch_size),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "devices": devices if isinstance(devices, int) else str(devices),
    }


def world_size(cfg: DictConfig) -> int:
    """Processes that train together (devices x nodes) when devices is a count."""
    devices = cfg.trainer.get("devices", 1)
    nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    return (devices if isinstance(devices, int) and devices > 0 else 1) * nodes


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """CSV (and TensorBoard) loggers writing into the run folder."""
    loggers: list[Logger] = []
    if cfg.logger.get("csv", False):
        loggers.append(CSVLogger(save_dir=str(output_dir), name="csv", version=""))
    if cfg.logger.get("tensorboard", False):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version=""))
    return loggers


def build_callbacks(
    cfg: DictConfig, output_dir: Path, throughput: ThroughputMonitor, history: MetricHistory
) -> list[L.Callback]:
    """Throughput, metric history, checkpoints and the progress bar the config asks for."""
    callbacks: list[L.Callback] = [throughput, history]
    ckpt = cfg.callbacks.checkpoint
    if ckpt.get("enabled", True):
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(output_dir / "checkpoints"),
                filename="best",
                monitor="val/acc",
                mode="max",
                save_top_k=1 if ckpt.get("save_best", True) else 0,
                save_last=bool(ckpt.get("save_last", True)),
                auto_insert_metric_name=False,
            )
        )
    progress = cfg.callbacks.get("progress", "rich")
    if progress == "rich":
        callbacks.append(RichProgressBar())
    elif progress == "tqdm":
        callbacks.append(TQDMProgressBar())
    elif progress != "none":
        raise ValueError(f"callbacks.progress must be rich, tqdm or none, got '{progress}'")
    return callbacks


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train and validate as `cfg` says; always leave results.json in `output_dir`."""
    start = time.time()
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"status": "running", **run_axes(cfg), "output_dir": str(output_dir)}
    write_results(output_dir, results)
    try:
        results.update(_fit(cfg, output_dir))
    except Exception as error:
        results.update(status="failed", error=f"{type(error).__name__}: {error}")
        (output_dir / "error.log").write_text(traceback.format_exc())
        raise
    finally:
        results["wall_s"] = round(time.time() - start, 3)
        write_results(output_dir, results)
    return results


def check_batch_size(model: torch.nn.Module, batch_size: int) -> None:
    """Let every norm layer refuse, before training, a per-device batch it cannot normalize."""
    for module in model.modules():
        check = getattr(module, "check_batch_size", None)
        if callable(check):
            check(batch_size)


def build_target_domain(cfg: DictConfig, source: ImageDataModule) -> ImageDataModule | None:
    """The shifted-domain data set of `precise_bn.data` (None when empty), normalized like the
    source, so the shift is not undone by its own input statistics."""
    changes = OmegaConf.to_container(cfg.precise_bn.data, resolve=True)
    if not changes:
        return None
    merged = {**OmegaConf.to_container(cfg.data, resolve=True), **changes}  # type: ignore[dict-item]
    target = build_datamodule(merged, int(cfg.precise_bn.batch_size), seed=int(cfg.seed))
    target.setup("fit")
    target.collate = source.collate
    return target


def quiet_lightning() -> None:
    """One copy of each Lightning message (Hydra's root handler already prints them), no tips."""
    logging.getLogger("lightning.pytorch").propagate = False
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def _fit(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("print_config", True):
        print_config(cfg)
    OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)

    name, params = norm_params(cfg.norm)
    norm = norm_factory(name, **params)
    datamodule = build_datamodule(cfg.data, int(cfg.batch_size), seed=int(cfg.seed))
    datamodule.setup("fit")
    model = build_model(
        cfg.model, norm, datamodule.num_classes, datamodule.in_channels, datamodule.image_size
    )
    world = world_size(cfg)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    global_batch = int(cfg.batch_size) * world * accumulate
    lr = scaled_lr(float(cfg.optim.lr), global_batch, cfg.optim.get("ref_batch_size"))
    module = Classifier(
        model,
        datamodule.num_classes,
        cfg.optim,
        cfg.sched,
        lr,
        float(cfg.divergence.loss_threshold),
    )

    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    check_batch_size(model, int(cfg.batch_size))
    target = build_target_domain(cfg, datamodule)
    throughput = ThroughputMonitor(int(cfg.batch_size), world)
    history = MetricHistory()
    diagnostics = diagnostics_callback(cfg, output_dir)
    callbacks = build_callbacks(cfg, output_dir, throughput, history)
    callbacks += [*statistics_callbacks(cfg), diagnostics]
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),  # type: ignore[arg-type]
        logger=build_loggers(cfg, output_dir) or False,
        callbacks=callbacks,
        default_root_dir=str(output_dir),
        enable_model_summary=False,
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({"lr": lr, "global_batch_size": global_batch, **run_axes(cfg)})
    trainer.fit(module, datamodule=datamodule)

    metrics = trainer.callback_metrics
    train_loss = metrics.get("train/loss_epoch")
    status = "diverged" if module.diverged else "completed"
    extra: dict[str, Any] = {}
    if diagnostics.enabled and not module.diverged:
        extra["diagnostics"] = diagnostics.summary()
        if any(True for _ in iter_population_layers(model)):
            extra["diagnostics"]["train_test_gap"] = train_test_gap(
                model, datamodule.val_dataloader(), module.device
            )
        plot = diagnostics.save_plot()
        extra["diagnostics"]["plot"] = plot.name if plot else None
    if target is not None and not module.diverged:
        extra["domain_shift"] = {
            "data": OmegaConf.to_container(cfg.precise_bn.data, resolve=True),
            **domain_shift_accuracy(
                model,
                target,
                int(cfg.precise_bn.target_samples),
                int(cfg.precise_bn.batch_size),
                int(cfg.seed),
                module.device,
            ),
        }
    return {
        **extra,
        "precise_bn_samples": int(cfg.precise_bn.num_samples),
        "frozen_bn_last_epochs": int(cfg.frozen_bn.last_epochs),
        "eval_stats": str(cfg.eval_stats),
        "eval_alpha": float(cfg.eval_alpha),
        "status": status,
        "diverged": module.diverged,
        "divergence_reason": module.divergence_reason or None,
        "val_acc": history.last("val/acc"),
        "best_val_acc": history.best("val/acc"),
        "val_loss": history.last("val/loss"),
        "val_acc5": history.last("val/acc5"),
        "train_loss": float(train_loss) if train_loss is not None else None,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "train_images_per_s": throughput.images_per_second,
        "global_batch_size": global_batch,
        "lr": lr,
        "world_size": world,
        "num_params": sum(p.numel() for p in model.parameters()),
        "history": history.epochs,
    }
