"""A Lightning callback that runs the diagnostics on a fixed probe batch every N epochs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from normlab.diagnostics.probe import LayerRecord, gradient_norms, probe_layers, summarize  # noqa: E402
from normlab.norms.population import population_layers  # noqa: E402
from normlab.run_folder import RunFolder  # noqa: E402
from normlab.stats.evaluate import train_test_gap  # noqa: E402

PLOTTED = ("collapse_ratio", "instance_ratio", "instance_std_cv", "act_std")


class DiagnosticsMonitor(L.Callback):
    """Per-layer power decomposition, activation scale and gradient norms on a probe batch.

    Costs nothing when `every_n_epochs` is 0. Logs `diag/<metric>/d<depth>` to every logger,
    keeps the last measurement for results.json and saves a metric-vs-depth plot per run.
    """

    def __init__(self, every_n_epochs: int, probe_size: int, output_dir: Path) -> None:
        self.every_n_epochs = every_n_epochs
        self.probe_size = probe_size
        self.output_dir = output_dir
        self.probe: tuple[Tensor, Tensor] | None = None
        self.history: list[tuple[int, list[LayerRecord]]] = []
        self.last_grad_norms: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        """Whether the monitor measures anything."""
        return self.every_n_epochs > 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        images, labels = [], []
        for batch_images, batch_labels in trainer.datamodule.val_dataloader():  # type: ignore[attr-defined]
            images.append(batch_images)
            labels.append(batch_labels)
            if sum(len(x) for x in images) >= self.probe_size:
                break
        self.probe = (torch.cat(images)[: self.probe_size], torch.cat(labels)[: self.probe_size])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or self.probe is None:
            return
        epoch = trainer.current_epoch
        if (
            (epoch + 1) % self.every_n_epochs
            and not trainer.should_stop
            and epoch + 1 != trainer.max_epochs
        ):
            return
        self.measure(trainer, pl_module)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run the probe now and log the per-layer metrics."""
        assert self.probe is not None
        images, labels = (t.to(pl_module.device) for t in self.probe)
        model = pl_module.model  # type: ignore[attr-defined]
        with torch.enable_grad():
            self.last_grad_norms = gradient_norms(model, images, labels)
        records = probe_layers(model, images)
        self.history.append((trainer.current_epoch, records))
        metrics = {
            f"diag/{key}/d{r.depth:02d}": value for r in records for key, value in r.metrics.items()
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write diagnostics.json and diagnostics.png into the run folder (rank zero only)."""
        if not self.history or not trainer.is_global_zero:
            return
        summary = self.summary()
        model = pl_module.model  # type: ignore[attr-defined]
        if population_layers(model) and not getattr(pl_module, "diverged", False):
            loader = trainer.datamodule.val_dataloader()  # type: ignore[attr-defined]
            summary["train_test_gap"] = train_test_gap(model, loader, pl_module.device)
        plot = self.save_plot()
        summary["plot"] = plot.name if plot else None
        RunFolder(self.output_dir).diagnostics.write_text(json.dumps(summary, indent=1) + "\n")

    def summary(self) -> dict[str, Any]:
        """The last measurement by depth, for results.json (empty when off)."""
        if not self.history:
            return {}
        epoch, records = self.history[-1]
        grads = list(self.last_grad_norms.values())
        return {
            "epoch": epoch,
            **summarize(records),
            "grad_norm_max": max(grads) if grads else None,
        }

    def save_plot(self) -> Path | None:
        """A PNG of each plotted metric against depth, one line per measured epoch."""
        if not self.history:
            return None
        fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
        for ax, key in zip(axes, PLOTTED, strict=True):
            for epoch, records in self.history:
                ax.plot(
                    [r.depth for r in records],
                    [r.metrics[key] for r in records],
                    label=f"epoch {epoch}",
                )
            ax.set_title(key)
            ax.set_xlabel("depth (norm layer)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = RunFolder(self.output_dir).diagnostics_plot
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
