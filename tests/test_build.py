"""build_run: a run's parts from its config, usable without fitting; the user's extra callbacks
(callbacks.extra); loggers closed whether the run succeeds or fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch

from normlab.job.build import build_run
from normlab.job.callbacks import FitSummary, extra_callbacks
from normlab.platform.environment import effective_strategy
from tests.helpers import compose_config, run_train, shrunk

TINY = shrunk("logger=none")


class Recorder(L.Callback):
    """A user's callback, named by `_target_`, with one argument."""

    def __init__(self, label: str = "") -> None:
        self.label = label


class FailAtTrainStart(L.Callback):
    """A callback that makes fit fail after the loggers started."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise RuntimeError("boom at train start")


@pytest.fixture
def same_threads() -> Iterator[int]:
    """The threads this test process already uses, kept after an in-process run."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def test_build_run_gives_every_part_without_fitting(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            *TINY,
            "batch_size=8",
            "virtual_devices=2",
            "+callbacks.extra.rec._target_=" + _name(Recorder),
        ]
    )
    run = build_run(cfg, tmp_path)
    assert (run.spec.virtual_devices, run.spec.world_size, run.spec.global_batch) == (2, 1, 16)
    assert run.spec.lr == pytest.approx(float(cfg.optim.lr) * 16 / cfg.optim.ref_batch_size)
    assert run.ckpt_path is None and run.loggers == [] and run.target is None
    assert run.module.model is run.model
    assert isinstance(run.callbacks[-1], Recorder)  # the user's callbacks come after normlab's
    assert any(isinstance(c, FitSummary) for c in run.callbacks)
    images, _ = next(iter(run.datamodule.val_dataloader()))
    run.model.eval()
    assert run.model(images).shape == (len(images), run.datamodule.num_classes)
    run.close()
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written


def test_extra_callbacks_are_instantiated_by_name_in_order() -> None:
    cfg = compose_config(
        [
            f"+callbacks.extra.b._target_={_name(Recorder)}",
            "+callbacks.extra.b.label=second",
            f"+callbacks.extra.a._target_={_name(Recorder)}",
            "+callbacks.extra.off=null",
        ]
    )
    made = extra_callbacks(cfg.callbacks.extra)
    assert [c.label for c in made] == ["second", ""]  # type: ignore[attr-defined]
    assert extra_callbacks(compose_config([]).callbacks.extra) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            ["+callbacks.extra.x._target_=no_such_module.Callback"],
            "callbacks.extra.x: _target_=no_such_module.Callback cannot be imported "
            "(No module named 'no_such_module')",
        ),
        (
            [
                "+callbacks.extra.x._target_=lightning.pytorch.callbacks.EarlyStopping",
                "+callbacks.extra.x.monitr=a",
            ],
            "callbacks.extra.x: lightning.pytorch.callbacks.EarlyStopping(...) failed: TypeError: ",
        ),
        (
            ["+callbacks.extra.x._target_=collections.OrderedDict"],
            "callbacks.extra.x: collections.OrderedDict is not a Lightning callback "
            "(it made a OrderedDict)",
        ),
        (["+callbacks.extra.x.monitor=val/acc"], "callbacks.extra.x needs a _target_"),
    ],
)
def test_a_bad_extra_callback_is_a_one_line_value_error(spec: list[str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        extra_callbacks(compose_config(spec).callbacks.extra)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_early_stopping_from_the_command_line_stops_the_run_early(tmp_path: Path) -> None:
    """The overrides a command line gives, composed and run in process."""
    from normlab.train import run

    stop = "+callbacks.extra.early_stop"
    cfg = compose_config(
        [
            *TINY,
            "trainer.max_epochs=6",
            f"{stop}._target_=lightning.pytorch.callbacks.EarlyStopping",
            f"{stop}.monitor=val/acc",
            f"{stop}.mode=max",
            f"{stop}.patience=0",
            f"{stop}.min_delta=1.0",  # no epoch improves val/acc by 1: stop after the second
        ]
    )
    run(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 2


def test_an_unknown_callback_class_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    proc = run_train([*TINY, "+callbacks.extra.x._target_=no_such_module.Callback"], tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("normlab: error:")]
    assert errors == [
        "normlab: error: callbacks.extra.x: _target_=no_such_module.Callback cannot be imported "
        "(No module named 'no_such_module')"
    ], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_wandb_run_is_finished_when_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_threads: int
) -> None:
    wandb = pytest.importorskip("wandb")
    from normlab.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        [
            *TINY,
            "logger=wandb",
            f"threads={same_threads}",
            f"+callbacks.extra.fail._target_={_name(FailAtTrainStart)}",
        ]
    )
    try:
        with pytest.raises(RuntimeError, match="boom at train start"):
            run(cfg, tmp_path / "run")
        assert wandb.run is None, "the failed job's W&B run was left open"
        results = json.loads((tmp_path / "run" / "results.json").read_text())
        assert results["status"] == "failed" and "boom" in results["error"]
        assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    finally:
        if wandb.run is not None:
            wandb.run.finish()


def test_ddp_spawn_becomes_ddp_under_slurm_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert effective_strategy("ddp_spawn") == "ddp_spawn"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert effective_strategy("ddp_spawn") == "ddp" and effective_strategy("auto") == "auto"


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_no_checkpoint_at_all_when_checkpoints_are_disabled(tmp_path: Path) -> None:
    """Lightning adds its own ModelCheckpoint (epoch=*.ckpt in the logger's folder) unless told
    not to: callbacks.checkpoint.enabled=false must mean no checkpoint file."""
    enabled = build_run(compose_config(TINY), tmp_path / "on")
    assert [type(c).__name__ for c in enabled.trainer.checkpoint_callbacks] == [
        "ModelCheckpoint"
    ] * 2
    disabled = build_run(
        compose_config([*TINY, "callbacks.checkpoint.enabled=false"]), tmp_path / "off"
    )
    assert disabled.trainer.checkpoint_callbacks == []
