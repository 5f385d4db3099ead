"""run(cfg): one training job from a composed config to results.json."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from normlab.callbacks import (
    EpochSeeding,
    FitSummary,
    MetricHistory,
    ReconcileNormBuffers,
    StopAfterEpochs,
    ThroughputMonitor,
    progress_bar,
)
from normlab.console import print_config
from normlab.data import ImageDataModule, build_datamodule
from normlab.lit import Classifier
from normlab.models import build_model
from normlab.norms import norm_factory, set_virtual_batch_size
from normlab.optim import scaled_lr
from normlab.results import redact, write_results
from normlab.runtime import configure_threads
from normlab.stats.evaluate import domain_shift_accuracy
from normlab.stats.setup import diagnostics_callback, statistics_callbacks

SUMMARY_FILE = ".fit_summary.json"
DIAGNOSTICS_FILE = "diagnostics.json"


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
        "virtual_devices": virtual_devices(cfg),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "devices": devices if isinstance(devices, int) else str(devices),
    }


def virtual_devices(cfg: DictConfig) -> int:
    """`virtual_devices`: DDP ranks of batch_size emulated in each process (1: off)."""
    value = cfg.get("virtual_devices", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"virtual_devices must be an int >= 1 (ranks of batch_size emulated in one process), "
            f"got {value!r}"
        )
    return value


def device_count(trainer_cfg: DictConfig) -> int:
    """Processes per node: `devices` as a count, a list of ids, or -1/'auto' (all GPUs)."""
    devices = trainer_cfg.get("devices", 1)
    gpu = trainer_cfg.get("accelerator") in ("gpu", "cuda")
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | ListConfig):
        return len(devices)
    if isinstance(devices, str) and devices.strip(",").isdigit():
        return int(devices.strip(","))
    return max(1, torch.cuda.device_count()) if gpu else 1


def world_size(cfg: DictConfig) -> int:
    """Processes that train together: devices per node x nodes."""
    nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    return device_count(cfg.trainer) * nodes


def check_devices(trainer_cfg: DictConfig) -> None:
    """Refuse, before any work, more devices than this machine has."""
    accelerator = trainer_cfg.get("accelerator", "cpu")
    wanted = trainer_cfg.get("devices", 1)
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ValueError(
                f"trainer.accelerator={accelerator} but no GPU is visible; "
                "use trainer=cpu or trainer=ddp_cpu"
            )
        if isinstance(wanted, int) and wanted > available:
            raise ValueError(f"trainer.devices={wanted} but only {available} GPU(s) are visible")
    elif accelerator == "cpu" and isinstance(wanted, int) and wanted > (os.cpu_count() or 1):
        raise ValueError(
            f"trainer.devices={wanted} CPU processes but this machine has only "
            f"{os.cpu_count()} CPU cores"
        )


def trainer_args(cfg: DictConfig) -> dict[str, Any]:
    """Lightning Trainer arguments from `cfg.trainer`.

    Under SLURM with several tasks (hydra/launcher=slurm, one task per GPU) each task already
    is one rank, so ddp_spawn becomes ddp: Lightning then reads the ranks from SLURM and
    relaunches nothing. DDP strategies keep each rank's buffers its own (see ddp_strategy).
    """
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(args, dict)
    if args.get("strategy") == "ddp_spawn" and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        args["strategy"] = "ddp"
    if args.get("strategy") in DDP_START_METHODS:
        args["strategy"] = ddp_strategy(str(args["strategy"]))
    return {str(k): v for k, v in args.items()}


DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}


def ddp_strategy(name: str) -> Any:
    """Lightning's `name` DDP strategy with broadcast_buffers off.

    torch's DDP default copies rank 0's buffers to every rank before each forward, so every
    rank's running statistics would be rank 0's EMA with one update of its own: the
    population statistics would see 1/world of the data, CBN's per-rank windows would be
    overwritten, and normlab's reconciliation (the mean of the per-rank buffers before every
    validation and checkpoint) would average nearly identical copies. Each rank keeps its own
    buffers instead, as each GPU of the papers' multi-GPU runs does, and virtual devices
    emulate exactly that.
    """
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(start_method=DDP_START_METHODS[name], broadcast_buffers=False)


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's own SIGUSR1 requeue is switched off: submitit (the Hydra
    launcher) requeues the job and normlab resumes from checkpoints/last.ckpt, one mechanism."""
    if "SLURM_JOB_ID" not in os.environ:
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def process_rank() -> int:
    """This process's global rank from the launcher's environment (0 for a spawn parent)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to resume from.

    `ckpt_path=last`: the run folder's checkpoints/last.ckpt (an error if there is none);
    `ckpt_path=<file>`: that file; `ckpt_path=null` with `resume=true` (the default):
    checkpoints/last.ckpt when it exists (a requeued or re-run job), else a fresh start.
    """
    last = output_dir / "checkpoints" / "last.ckpt"
    requested = cfg.get("ckpt_path")
    if requested == "last":
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist")
        return str(last)
    if requested:
        if not Path(str(requested)).is_file():
            raise FileNotFoundError(f"ckpt_path={requested} does not exist")
        return str(requested)
    return str(last) if cfg.get("resume", True) and last.is_file() else None


def check_norm_batch_size(model: nn.Module, batch_size: int) -> None:
    """Ask every layer that can tell (normlab norms) whether it trains at this per-device batch."""
    for module in model.modules():
        check = getattr(module, "check_batch_size", None)
        if callable(check):
            check(batch_size)


def check_precise_bn_samples(num_samples: int, datamodule: ImageDataModule) -> None:
    """Refuse, before training, a PreciseBN sample count the training set cannot supply (it
    failed only at the first validation, after an epoch of work)."""
    available = len(datamodule.train_set)  # type: ignore[arg-type]
    if num_samples > available:
        raise ValueError(
            f"precise_bn.num_samples={num_samples} exceeds the {available} training samples of "
            f"data={datamodule.name}; use at most {available}"
        )


def csv_version(output_dir: Path) -> str:
    """'' (csv/metrics.csv) for a fresh run; a resumed run that finds earlier metrics writes
    csv/resumed_<k>/metrics.csv instead, since Lightning's CSV logger would overwrite them."""
    if not (output_dir / "csv" / "metrics.csv").exists():
        return ""
    k = 1
    while (output_dir / "csv" / f"resumed_{k}").exists():
        k += 1
    return f"resumed_{k}"


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """CSV, TensorBoard and W&B loggers writing into the run folder."""
    loggers: list[Logger] = []
    if cfg.logger.get("csv", False):
        loggers.append(
            CSVLogger(save_dir=str(output_dir), name="csv", version=csv_version(output_dir))
        )
    if cfg.logger.get("tensorboard", False):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version=""))
    if cfg.logger.get("wandb", False) and process_rank() == 0:
        from normlab.wandb_logging import build_wandb_logger

        wandb_logger = build_wandb_logger(cfg, output_dir)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def build_callbacks(
    cfg: DictConfig, output_dir: Path, throughput: ThroughputMonitor, history: MetricHistory
) -> list[L.Callback]:
    """Throughput, metric history, seeding, buffer reconciliation, checkpoints, progress bar,
    and the summary rank 0 writes for the main process."""
    stop_after = cfg.get("debug", {}).get("stop_after_epochs")
    stopper = StopAfterEpochs(int(stop_after)) if stop_after else None
    callbacks: list[L.Callback] = [
        throughput,
        history,
        EpochSeeding(int(cfg.seed)),
        ReconcileNormBuffers(),
        FitSummary(output_dir / SUMMARY_FILE, history, throughput, stopper),
    ]
    if stopper is not None:
        callbacks.append(stopper)
    ckpt = cfg.callbacks.checkpoint
    if ckpt.get("enabled", True):
        callbacks.extend(checkpoint_callbacks(output_dir / "checkpoints", ckpt))
    bar = progress_bar(str(cfg.callbacks.get("progress", "rich")))
    if bar is not None:
        callbacks.append(bar)
    return callbacks


def checkpoint_callbacks(directory: Path, ckpt: DictConfig) -> list[ModelCheckpoint]:
    """best.ckpt (highest val/acc) and last.ckpt (rewritten after every epoch, for resume).

    Two callbacks, because Lightning's own save_last only rewrites last.ckpt in an epoch that
    also saved a top-k checkpoint, which would resume a preempted run from a stale epoch."""
    callbacks = []
    if ckpt.get("save_best", True):
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(directory),
                filename="best",
                monitor="val/acc",
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
            )
        )
    if ckpt.get("save_last", True):
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(directory), filename="last", save_top_k=1, enable_version_counter=False
            )
        )
    return callbacks


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train and validate as `cfg` says; rank 0 always leaves results.json in `output_dir`."""
    start = time.time()
    primary = process_rank() == 0
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"status": "running", **run_axes(cfg), "output_dir": str(output_dir)}
    if primary:
        write_results(output_dir, results)
    try:
        spawned = trainer_args(cfg).get("strategy") == "ddp_spawn"  # ranks share this job's cores
        ranks = device_count(cfg.trainer) if spawned else 1
        results["threads"] = configure_threads(cfg.get("threads"), ranks)
        results.update(_fit(cfg, output_dir, primary))
    except Exception as error:
        results.update(status="failed", error=redact(f"{type(error).__name__}: {error}"))
        if primary:
            (output_dir / "error.log").write_text(redact(traceback.format_exc()))
        raise
    finally:
        results["wall_s"] = round(time.time() - start, 3)
        if primary:
            write_results(output_dir, results)
    return results


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
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")


def read_summary(output_dir: Path) -> dict[str, Any]:
    """What rank 0 recorded at the end of fit (see FitSummary); removed once read."""
    path = output_dir / SUMMARY_FILE
    if not path.exists():
        raise RuntimeError(f"training ended without writing {path}")
    summary = json.loads(path.read_text())
    path.unlink()
    return summary


def _fit(cfg: DictConfig, output_dir: Path, primary: bool = True) -> dict[str, Any]:
    quiet_lightning()
    check_devices(cfg.trainer)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("print_config", True) and primary:
        print_config(cfg)
    if primary:
        resolved = redact(OmegaConf.to_container(cfg, resolve=True))
        OmegaConf.save(OmegaConf.create(resolved), output_dir / "config_resolved.yaml")

    name, params = norm_params(cfg.norm)
    norm = norm_factory(name, **params)
    batch_size, virtual = int(cfg.batch_size), virtual_devices(cfg)
    datamodule = build_datamodule(cfg.data, batch_size, seed=int(cfg.seed), virtual_devices=virtual)
    datamodule.setup("fit")
    model = build_model(
        cfg.model, norm, datamodule.num_classes, datamodule.in_channels, datamodule.image_size
    )
    check_norm_batch_size(model, batch_size)
    check_precise_bn_samples(int(cfg.precise_bn.num_samples), datamodule)
    set_virtual_batch_size(model, batch_size if virtual > 1 else None)
    target = build_target_domain(cfg, datamodule)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    world = world_size(cfg)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    global_batch = batch_size * virtual * world * accumulate
    lr = scaled_lr(float(cfg.optim.lr), global_batch, cfg.optim.get("ref_batch_size"))
    if primary:
        print(
            f"normlab: learning rate {lr:.6g} (optim.lr {cfg.optim.lr} scaled to the global batch "
            f"{global_batch}: batch_size {batch_size} x virtual_devices {virtual} x {world} "
            f"device(s) x {accumulate} accumulation / optim.ref_batch_size "
            f"{cfg.optim.get('ref_batch_size')})"
        )
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
    throughput = ThroughputMonitor(batch_size * virtual, world)
    history = MetricHistory()
    loggers = build_loggers(cfg, output_dir)
    args = trainer_args(cfg)
    plugins = [*cluster_plugins(), *(args.pop("plugins", None) or [])]
    trainer = L.Trainer(
        **args,
        plugins=plugins or None,
        logger=loggers or False,
        callbacks=[
            *build_callbacks(cfg, output_dir, throughput, history),
            *statistics_callbacks(cfg, virtual),
            diagnostics_callback(cfg, output_dir),
        ],
        default_root_dir=str(output_dir),
        enable_model_summary=False,
        enable_progress_bar=cfg.callbacks.get("progress", "rich") != "none",
    )
    hparams = {"lr": lr, "global_batch_size": global_batch, "world_size": world, **run_axes(cfg)}
    for logger in trainer.loggers:
        logger.log_hyperparams(redact(hparams))
    if ckpt_path and primary:
        print(f"normlab: resuming from {ckpt_path}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if not primary:
        return {}

    summary = read_summary(output_dir)
    history_epochs = summary["history"]
    status = (
        "diverged"
        if summary["diverged"]
        else "interrupted"
        if summary["interrupted"]
        else "debug"
        if cfg.trainer.get("fast_dev_run")
        else "completed"
    )
    results = {
        "status": status,
        "diverged": summary["diverged"],
        "divergence_reason": summary["divergence_reason"],
        "val_acc": _last(history_epochs, "val/acc"),
        "best_val_acc": max(_values(history_epochs, "val/acc"), default=None),
        "val_loss": _last(history_epochs, "val/loss"),
        "val_acc5": _last(history_epochs, "val/acc5"),
        "train_loss": summary["train_loss"],
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "train_images_per_s": summary["train_images_per_s"],
        "global_batch_size": global_batch,
        "virtual_devices": virtual,
        "lr": lr,
        "world_size": world,
        "resumed_from": ckpt_path,
        "num_params": sum(p.numel() for p in model.parameters()),
        "history": history_epochs,
        "precise_bn_samples": int(cfg.precise_bn.num_samples),
        "frozen_bn_last_epochs": int(cfg.frozen_bn.last_epochs),
        "eval_stats": str(cfg.eval_stats),
        "eval_alpha": float(cfg.eval_alpha),
    }
    diagnostics = read_diagnostics(output_dir)
    if diagnostics:
        results["diagnostics"] = diagnostics
    if target is not None and status == "completed":
        results["domain_shift"] = {
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
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            from normlab.wandb_logging import log_results_table

            log_results_table(logger, results)
    return results


def _values(epochs: list[dict[str, float]], key: str) -> list[float]:
    return [e[key] for e in epochs if e.get(key) is not None]


def _last(epochs: list[dict[str, float]], key: str) -> float | None:
    values = _values(epochs, key)
    return values[-1] if values else None


def read_diagnostics(output_dir: Path) -> dict[str, Any]:
    """What the diagnostics monitor left in the run folder (it runs in the training process)."""
    path = output_dir / DIAGNOSTICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
