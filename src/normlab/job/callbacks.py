"""The callbacks of a run: build_callbacks makes every one a config asks for (these, the
population-statistics and diagnostics callbacks, and the user's `callbacks.extra`).

Defined here: throughput, metric history, per-epoch seeding (exact resume), checkpoints,
progress bars, and the summary rank 0 hands back to the main process. DDP buffer reconciliation
(ReconcileNormBuffers) acts on the population statistics and lives with them, in
normlab.stats.callbacks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig

from normlab.config.schemas import CheckpointConfig, DiagnosticsConfig
from normlab.data.resumable import HandBackLoaderState
from normlab.diagnostics.callback import DiagnosticsMonitor
from normlab.job.spec import RunSpec
from normlab.platform.interruptions import RunClock, SignalCheckpoint
from normlab.results import RunResult
from normlab.run_folder import BEST_CHECKPOINT, LAST_CHECKPOINT, RunFolder
from normlab.stats.callbacks import (
    EvalStatsCallback,
    FrozenBNCallback,
    PreciseBNCallback,
    ReconcileNormBuffers,
)
from normlab.stats.compare import PreciseBNComparison


def build_callbacks(
    spec: RunSpec,
    output_dir: Path,
    extra: DictConfig | None = None,
    slurm: bool = False,
) -> list[L.Callback]:
    """Every callback of a run, in the order Lightning calls them: throughput, metric history,
    seeding, buffer reconciliation, the fit summary, the run clock, cluster signals (and
    debug.stop_after_epochs), checkpoints, the progress bar, population statistics,
    diagnostics, then the user's (`extra`: callbacks.extra)."""
    virtual_devices, world_size = spec.virtual_devices, spec.world_size
    throughput = ThroughputMonitor(spec.batch_size * virtual_devices, world_size)
    history = MetricHistory()
    clock = RunClock()
    stop_after = spec.debug.stop_after_epochs
    ckpt = spec.checkpoint
    saving = ckpt.enabled and ckpt.save_last
    folder = RunFolder(output_dir)
    signals = SignalCheckpoint(folder.last_checkpoint if saving else None, slurm)
    stoppers: list[StopAfterEpochs | SignalCheckpoint] = [signals]
    if stop_after:
        stoppers.append(StopAfterEpochs(int(stop_after)))
    callbacks: list[L.Callback] = [
        throughput,
        history,
        EpochSeeding(spec.seed),
        ReconcileNormBuffers(),
        FitSummary(folder.fit_summary, history, throughput, stoppers, clock, spec.debug.option),
        clock,
        HandBackLoaderState(),
        *stoppers,
    ]
    if ckpt.enabled:
        callbacks.extend(checkpoint_callbacks(folder.checkpoints, ckpt))
    bar = progress_bar(spec.progress)
    if bar is not None:
        callbacks.append(bar)
    callbacks.extend(statistics_callbacks(spec))
    callbacks.append(diagnostics_callback(spec.diagnostics, output_dir))
    callbacks.extend(extra_callbacks(extra))
    return callbacks


def checkpoint_callbacks(directory: Path, ckpt: CheckpointConfig) -> list[ModelCheckpoint]:
    """best.ckpt (highest val/acc) and last.ckpt (rewritten after every epoch, for resume).

    Two callbacks, because Lightning's own save_last only rewrites last.ckpt in an epoch that
    also saved a top-k checkpoint, which would resume a preempted run from a stale epoch."""
    callbacks = []
    if ckpt.save_best:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(directory),
                filename=BEST_CHECKPOINT,
                monitor="val/acc",
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
            )
        )
    if ckpt.save_last:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(directory),
                filename=LAST_CHECKPOINT,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    return callbacks


def statistics_callbacks(spec: RunSpec) -> list[L.Callback]:
    """PreciseBN, the EMA-vs-PreciseBN comparison, FrozenBN and evaluation-statistics callbacks
    (none when all are off); under virtual devices PreciseBN estimates with per-chunk statistics
    at precise_bn.batch_size."""
    callbacks: list[L.Callback] = []
    precise: PreciseBNCallback | None = None
    virtual_devices, seed, precise_bn = spec.virtual_devices, spec.seed, spec.precise_bn
    num_samples = int(precise_bn.num_samples)
    if num_samples < 0:
        raise ValueError(f"precise_bn.num_samples must be >= 0, got {num_samples}")
    if num_samples > 0:
        precise = PreciseBNCallback(num_samples, int(precise_bn.batch_size), seed, virtual_devices)
        callbacks.append(precise)
    compare = [int(n) for n in precise_bn.compare_samples]
    if compare:
        if spec.world_size > 1:
            raise ValueError(
                "precise_bn.compare_samples evaluates in one process (virtual_devices are fine); "
                "for a DDP run, evaluate its checkpoints with eval.py 'precise_bn_samples=[...]'"
            )
        callbacks.append(
            PreciseBNComparison(compare, int(precise_bn.batch_size), seed, virtual_devices)
        )
    if int(spec.frozen_bn.last_epochs) > 0:
        callbacks.append(
            FrozenBNCallback(
                int(spec.frozen_bn.last_epochs), bool(spec.frozen_bn.freeze_affine), precise
            )
        )
    if spec.eval_stats != "population" or spec.eval_alpha > 0:
        callbacks.append(EvalStatsCallback(spec.eval_stats, spec.eval_alpha))
    return callbacks


def diagnostics_callback(
    diagnostics_cfg: DiagnosticsConfig, output_dir: Path
) -> DiagnosticsMonitor:
    """The diagnostics monitor of the `diagnostics` config (idle when every_n_epochs is 0)."""
    every = int(diagnostics_cfg.every_n_epochs)
    if every < 0:
        raise ValueError(f"diagnostics.every_n_epochs must be >= 0, got {every}")
    return DiagnosticsMonitor(every, int(diagnostics_cfg.probe_size), output_dir)


def extra_callbacks(extra: DictConfig | None, key: str = "callbacks.extra") -> list[L.Callback]:
    """The user's callbacks: each entry of `callbacks.extra` that is not null, instantiated by
    Hydra (`_target_`: a Lightning callback class; its other keys: the arguments), in key order.

    A bad entry is a ValueError in one line naming the entry (cli.py prints it as is)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    callbacks: list[L.Callback] = []
    for name, spec in (extra or {}).items():
        if spec is None:
            continue
        where = f"{key}.{name}"
        target = spec.get("_target_") if isinstance(spec, DictConfig) else None
        if not target:
            raise ValueError(
                f"{where} needs a _target_ (a Lightning callback class), e.g. "
                f"+{where}._target_=lightning.pytorch.callbacks.EarlyStopping"
            )
        try:
            callback = instantiate(spec)
        except InstantiationException as error:
            cause = error.__cause__
            if isinstance(cause, ImportError):
                reason = f"_target_={target} cannot be imported ({cause.__cause__ or cause})"
            elif cause is not None:
                reason = f"{target}(...) failed: {type(cause).__name__}: {cause}"
            else:
                reason = str(error).splitlines()[0]
            raise ValueError(f"{where}: {reason}") from error
        if not isinstance(callback, L.Callback):
            raise ValueError(
                f"{where}: {target} is not a Lightning callback (it made a "
                f"{type(callback).__name__})"
            )
        callbacks.append(callback)
    return callbacks


class ThroughputMonitor(L.Callback):
    """Training images per second over all steps but the first `skip` of each epoch.

    Wall time between consecutive batch ends, so data loading counts and validation does not.
    On a GPU the clock is read after a synchronisation at the start of the timed stretch and
    at the end of the epoch's last batch only, so the sum is exact and no step waits.
    """

    def __init__(self, batch_size: int, world_size: int = 1, skip: int = 2) -> None:
        if skip < 1:
            raise ValueError(f"ThroughputMonitor needs skip >= 1 (a start mark), got {skip}")
        self.images_per_step = batch_size * world_size
        self.skip = skip
        self.images = 0
        self.seconds = 0.0
        self._last: float | None = None
        self._index = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None
        self._index = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._index == self.skip - 1 or batch_idx + 1 >= trainer.num_training_batches:
            synchronize(pl_module.device)
        now = time.perf_counter()
        if self._last is not None and self._index >= self.skip:
            self.seconds += now - self._last
            self.images += self.images_per_step
        self._last = now
        self._index += 1

    @property
    def images_per_second(self) -> float | None:
        """Measured throughput, None before enough steps ran."""
        return self.images / self.seconds if self.seconds > 0 else None


def synchronize(device: torch.device) -> None:
    """Wait for the queued work of a CUDA device (a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TrainLossInProgressBar:
    """Shows the latest training loss the module read back (a host float, see
    normlab.job.lit.Classifier), so the bar never converts a device tensor per step."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        loss = getattr(pl_module, "last_train_loss", None)
        if loss is not None:
            metrics["train/loss"] = loss
        return metrics


class RichProgress(_TrainLossInProgressBar, RichProgressBar):
    """Lightning's rich progress bar with the training loss."""


class TQDMProgress(_TrainLossInProgressBar, TQDMProgressBar):
    """Lightning's tqdm progress bar with the training loss."""


def progress_bar(kind: str) -> L.Callback | None:
    """The progress bar `callbacks.progress` names: rich, tqdm, or none (None)."""
    if kind == "rich":
        return RichProgress()
    if kind == "tqdm":
        return TQDMProgress()
    if kind != "none":
        raise ValueError(f"callbacks.progress must be rich, tqdm or none, got '{kind}'")
    return None


class MetricHistory(L.Callback):
    """Validation metrics after every epoch (sanity checks excluded): final and best values."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics["epoch"] = trainer.current_epoch
        self.epochs.append(metrics)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints so a resumed run keeps the epochs before the interruption."""
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))


class EpochSeeding(L.Callback):
    """Reseed torch, numpy and random at every training epoch from (seed, epoch, rank).

    Data order and augmentation of epoch e then depend only on e, never on what ran before,
    so a run resumed from an epoch-end checkpoint replays exactly what an uninterrupted run
    sees (the DataLoader's shuffling and the tensor augmentations draw from these generators).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch_seed = self.seed * 1_000_003 + trainer.current_epoch * 1_009 + trainer.global_rank
        L.seed_everything(epoch_seed % (2**31), workers=True, verbose=False)


class StopAfterEpochs(L.Callback):
    """Stop cleanly after `epochs` training epochs, as a preempted job would (tests resume)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.interrupted = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            trainer.current_epoch + 1 >= self.epochs
            and trainer.current_epoch + 1 < trainer.max_epochs
        ):
            trainer.should_stop = True
            self.interrupted = True


class FitSummary(L.Callback):
    """Rank 0 writes what results.json needs at the end of fit to `path` (read_fit_summary).

    Under ddp_spawn training happens in child processes whose callbacks and module the main
    process never sees; this file carries the numbers back. Non-spawn runs use it as well, so
    there is one path.
    """

    def __init__(
        self,
        path: Path,
        history: MetricHistory,
        throughput: ThroughputMonitor,
        stoppers: list[StopAfterEpochs | SignalCheckpoint],
        clock: RunClock,
        debug_option: str | None = None,
    ) -> None:
        self.path = path
        self.history = history
        self.throughput = throughput
        self.stoppers = stoppers
        self.clock = clock
        self.debug_option = debug_option

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        train_loss = trainer.callback_metrics.get("train/loss_epoch")
        result: RunResult = {
            "diverged": bool(getattr(pl_module, "diverged", False)),
            "divergence_reason": getattr(pl_module, "divergence_reason", "") or None,
            "history": self.history.epochs,
            "train_loss": float(train_loss) if train_loss is not None else None,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "train_images_per_s": self.throughput.images_per_second,
            "attempts": self.clock.attempt,
            "earlier_attempts_s": round(self.clock.earlier_s, 3),
            "earlier_attempts_cpu_s": _rounded(self.clock.earlier_cpu_s),
        }
        debug = debug_settings(trainer, self.debug_option)
        if debug:
            result["debug"] = debug
        interrupted = any(stopper.interrupted for stopper in self.stoppers)
        self.path.write_text(
            json.dumps({"result": result, "interrupted": interrupted}, allow_nan=True)
        )


def debug_settings(trainer: L.Trainer, option: str | None = None) -> str | None:
    """What made this a debug run rather than a result, or None: the conf/debug option
    (`debug=limit`), or the Trainer's own ways of shrinking training (fast_dev_run,
    overfit_batches, limit_train_batches below the whole epoch). results.json then records
    status 'debug', which no report averages in."""
    settings = [f"debug={option}"] if option else []
    limit = trainer.limit_train_batches
    if trainer.fast_dev_run:
        settings.append(f"trainer.fast_dev_run={trainer.fast_dev_run}")
    elif trainer.overfit_batches:
        settings.append(f"trainer.overfit_batches={trainer.overfit_batches}")
    elif limit is not None and (isinstance(limit, int) or limit < 1.0):
        settings.append(f"trainer.limit_train_batches={limit}")
    return ", ".join(settings) or None


def read_fit_summary(path: Path) -> tuple[RunResult, bool]:
    """What FitSummary recorded at the end of fit, and whether the run was interrupted (stopped
    before max_epochs as a preempted job is); the file is removed once read."""
    if not path.exists():
        raise RuntimeError(f"training ended without writing {path}")
    summary = json.loads(path.read_text())
    path.unlink()
    return summary["result"], bool(summary["interrupted"])


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
