"""Lightning callbacks of every run: throughput, metric history, DDP buffer reconciliation,
per-epoch seeding (exact resume), and the summary rank 0 hands back to the main process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch import Tensor, nn

from normlab.norms import is_norm_layer
from normlab.norms.virtual import reconcile_virtual_ranks


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
    normlab.lit.Classifier), so the bar never converts a device tensor per step."""

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

    def best(self, key: str = "val/acc") -> float | None:
        """Highest value of `key` over the epochs."""
        values = [e[key] for e in self.epochs if key in e]
        return max(values) if values else None

    def last(self, key: str) -> float | None:
        """Value of `key` after the last validation."""
        values = [e[key] for e in self.epochs if key in e]
        return values[-1] if values else None


def batch_dependent_buffers(model: nn.Module) -> list[Tensor]:
    """The running statistics of batch-dependent normlab norm layers, each once.

    Each layer declares them (`population_buffers` of normlab.norms.population.PopulationStats,
    whatever their names), so every family (BN, ghost BN, batch renorm, ...) is covered without
    type checks or name guessing; a NormAct is skipped (its inner layer is visited itself).
    """
    from normlab.norms.population import PopulationStats

    found: dict[int, Tensor] = {}
    for module in model.modules():
        if is_norm_layer(module) and module.batch_dependent and isinstance(module, PopulationStats):
            for buffer in module.population_tensors():
                if buffer.is_floating_point():
                    found.setdefault(id(buffer), buffer)
    return list(found.values())


def average_across_ranks(buffers: list[Tensor]) -> None:
    """Replace each buffer by its mean over all DDP ranks (a no-op outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for buffer in buffers:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        buffer.div_(world)


class ReconcileNormBuffers(L.Callback):
    """Under DDP each rank updates its BN running statistics from its own batches only.

    Before every validation (which is also before the epoch's checkpoint) and at the end of
    each training epoch, the running_* buffers of batch-dependent norm layers are averaged
    across ranks with an all-reduce, so evaluation, checkpoints and the saved model use one
    set of population statistics, the same on every rank. Layers that keep per-virtual-rank
    state (virtual devices) collapse it to the ranks' mean at the same points.
    """

    def _reconcile(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            average_across_ranks(batch_dependent_buffers(pl_module))
        reconcile_virtual_ranks(pl_module)  # virtual devices: the same, for emulated ranks

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reconcile(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reconcile(trainer, pl_module)


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
    """Rank 0 writes what results.json needs at the end of fit to `path`.

    Under ddp_spawn training happens in child processes whose callbacks and module the main
    process never sees; this file carries the numbers back. Non-spawn runs use it as well, so
    there is one path.
    """

    def __init__(
        self,
        path: Path,
        history: MetricHistory,
        throughput: ThroughputMonitor,
        stopper: StopAfterEpochs | None = None,
    ) -> None:
        self.path = path
        self.history = history
        self.throughput = throughput
        self.stopper = stopper

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        train_loss = trainer.callback_metrics.get("train/loss_epoch")
        summary = {
            "diverged": bool(getattr(pl_module, "diverged", False)),
            "divergence_reason": getattr(pl_module, "divergence_reason", "") or None,
            "interrupted": bool(self.stopper and self.stopper.interrupted),
            "history": self.history.epochs,
            "train_loss": float(train_loss) if train_loss is not None else None,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "train_images_per_s": self.throughput.images_per_second,
        }
        self.path.write_text(json.dumps(summary, allow_nan=True))
