"""The population-statistics and diagnostics callbacks a run's config asks for."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from normlab.diagnostics.callback import DiagnosticsMonitor
from normlab.stats.callbacks import EvalStatsCallback, FrozenBNCallback, PreciseBNCallback


def statistics_callbacks(cfg: DictConfig, virtual_devices: int = 1) -> list[L.Callback]:
    """PreciseBN, FrozenBN and evaluation-statistics callbacks (none when all are off); under
    virtual devices PreciseBN estimates with per-chunk statistics at precise_bn.batch_size."""
    callbacks: list[L.Callback] = []
    precise: PreciseBNCallback | None = None
    num_samples = int(cfg.precise_bn.num_samples)
    if num_samples < 0:
        raise ValueError(f"precise_bn.num_samples must be >= 0, got {num_samples}")
    if num_samples > 0:
        precise = PreciseBNCallback(
            num_samples, int(cfg.precise_bn.batch_size), int(cfg.seed), virtual_devices
        )
        callbacks.append(precise)
    if int(cfg.frozen_bn.last_epochs) > 0:
        callbacks.append(
            FrozenBNCallback(
                int(cfg.frozen_bn.last_epochs), bool(cfg.frozen_bn.freeze_affine), precise
            )
        )
    if cfg.eval_stats != "population" or float(cfg.eval_alpha) > 0:
        callbacks.append(EvalStatsCallback(str(cfg.eval_stats), float(cfg.eval_alpha)))
    return callbacks


def diagnostics_callback(cfg: DictConfig, output_dir: Path) -> DiagnosticsMonitor:
    """The diagnostics monitor (idle when diagnostics.every_n_epochs is 0)."""
    every = int(cfg.diagnostics.every_n_epochs)
    if every < 0:
        raise ValueError(f"diagnostics.every_n_epochs must be >= 0, got {every}")
    return DiagnosticsMonitor(every, int(cfg.diagnostics.probe_size), output_dir)
