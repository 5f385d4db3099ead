"""Lightning callbacks of every run: training throughput."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class ThroughputMonitor(L.Callback):
    """Training images per second over all steps but the first `skip` of each epoch.

    Wall time between consecutive batch ends, so data loading counts and validation does not.
    """

    def __init__(self, batch_size: int, world_size: int = 1, skip: int = 2) -> None:
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
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
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

    def best(self, key: str = "val/acc") -> float | None:
        """Highest value of `key` over the epochs."""
        values = [e[key] for e in self.epochs if key in e]
        return max(values) if values else None

    def last(self, key: str) -> float | None:
        """Value of `key` after the last validation."""
        values = [e[key] for e in self.epochs if key in e]
        return values[-1] if values else None
