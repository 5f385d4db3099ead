"""build_run: a run's parts from its config, usable without fitting."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.build import build_run
from normlab.callbacks import FitSummary
from normlab.environment import effective_strategy
from tests.helpers import compose_config

TINY = [
    "trainer.max_epochs=1",
    "data.train_samples=64",
    "data.val_samples=64",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress=none",
    "print_config=false",
    "logger=none",
]


def test_build_run_gives_every_part_without_fitting(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            *TINY,
            "batch_size=8",
            "virtual_devices=2",
        ]
    )
    run = build_run(cfg, tmp_path)
    assert (run.virtual, run.world, run.global_batch) == (2, 1, 16)
    assert run.lr == pytest.approx(float(cfg.optim.lr) * 16 / cfg.optim.ref_batch_size)
    assert run.ckpt_path is None and run.loggers == [] and run.target is None
    assert run.module.model is run.model
    assert any(isinstance(c, FitSummary) for c in run.callbacks)
    images, _ = next(iter(run.datamodule.val_dataloader()))
    run.model.eval()
    assert run.model(images).shape == (len(images), run.datamodule.num_classes)
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written


def test_ddp_spawn_becomes_ddp_under_slurm_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert effective_strategy("ddp_spawn") == "ddp_spawn"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert effective_strategy("ddp_spawn") == "ddp" and effective_strategy("auto") == "auto"
