"""Config groups built as Hydra builds them: trainer=cpu and gpu on one base file, logger and
callbacks typed by their schemas (callbacks.extra left open), data=imagenet recorded as such."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from normlab.cli import check_config_overrides, group_choices
from normlab.config.schemas import (
    GROUP_SCHEMAS,
    CallbacksConfig,
    CheckpointConfig,
    LoggerConfig,
    WandbLoggerConfig,
)
from tests.helpers import CONF_DIR, compose_config

pytestmark = pytest.mark.fast  # in-process: make test-fast

# `python train.py trainer=<option> --cfg job` before the trainer files shared a base: the same
# keys, values and order.
TRAINERS = {
    "cpu": {"accelerator": "cpu", "devices": 1, "max_epochs": 15, "precision": "32-true",
            "log_every_n_steps": 10, "num_sanity_val_steps": 1, "deterministic": False},
    "gpu": {"accelerator": "gpu", "devices": 1, "max_epochs": 15, "precision": "32-true",
            "log_every_n_steps": 50, "num_sanity_val_steps": 1, "deterministic": False,
            "benchmark": True},
    "ddp": {"accelerator": "gpu", "devices": -1, "max_epochs": 15, "precision": "32-true",
            "log_every_n_steps": 50, "num_sanity_val_steps": 1, "deterministic": False,
            "benchmark": True, "strategy": "ddp_spawn"},
    "ddp_cpu": {"accelerator": "cpu", "devices": 2, "max_epochs": 15, "precision": "32-true",
                "log_every_n_steps": 10, "num_sanity_val_steps": 1, "deterministic": False,
                "strategy": "ddp_spawn"},
}  # fmt: skip


@pytest.mark.parametrize("option", sorted(TRAINERS))
def test_every_trainer_composes_as_before_the_shared_base(option: str) -> None:
    trainer = OmegaConf.to_container(compose_config([f"trainer={option}"]).trainer)
    assert list(trainer.items()) == list(TRAINERS[option].items())  # type: ignore[union-attr]


def test_cpu_and_gpu_state_only_what_differs_from_their_base() -> None:
    assert group_choices(CONF_DIR, "trainer") == sorted(TRAINERS)  # _base is no option
    base = yaml.safe_load((CONF_DIR / "trainer" / "_base.yaml").read_text())
    shared = {key for key, value in base.items() if value != "???"}
    for option in ("cpu", "gpu"):
        own = yaml.safe_load((CONF_DIR / "trainer" / f"{option}.yaml").read_text())
        assert own.pop("defaults") == ["_base", "_self_"]
        assert not shared & set(own), option
    # what each option must set: the base leaves it without a value
    missing = OmegaConf.missing_keys(compose_config(["trainer=_base"]))
    assert missing == {"trainer.accelerator", "trainer.log_every_n_steps"}


@pytest.mark.parametrize("option", group_choices(CONF_DIR, "logger") or [])
def test_every_logger_file_is_an_instance_of_its_schema(option: str) -> None:
    logger = compose_config([f"logger={option}"]).logger
    schema = OmegaConf.get_type(logger)
    assert schema in GROUP_SCHEMAS["logger"].values()
    assert isinstance(OmegaConf.to_object(logger), LoggerConfig)
    assert (schema is WandbLoggerConfig) == (option == "wandb")


def test_logger_files_keep_their_sinks() -> None:
    sinks = {
        option: [bool(compose_config([f"logger={option}"]).logger[k]) for k in ("csv", "tensorboard", "wandb")]
        for option in ("csv", "none", "tensorboard", "wandb")
    }  # fmt: skip
    assert sinks == {
        "csv": [True, False, False],
        "none": [False, False, False],
        "tensorboard": [True, True, False],
        "wandb": [True, False, True],
    }
    callbacks = compose_config([]).callbacks
    assert OmegaConf.get_type(callbacks) is CallbacksConfig
    assert OmegaConf.get_type(callbacks.checkpoint) is CheckpointConfig
    assert OmegaConf.to_container(callbacks) == {
        "progress": "rich",
        "checkpoint": {"enabled": True, "save_best": True, "save_last": True},
        "extra": {},
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["logger.projct=x"], "unknown config key 'logger.projct'"),
        (["+logger.projct=x"], "unknown config key 'logger.projct' (logger keys: csv, tensorboard"),
        (["logger=wandb", "+logger.entiy=me"], "did you mean 'logger.entity'?"),
        (["logger.csv=maybe"], "logger.csv must be true or false, got 'maybe'"),
        (["logger=wandb", "logger.init_timeout=x"], "logger.init_timeout must be a number"),
        (["callbacks.progres=none"], "did you mean 'callbacks.progress'?"),
        (["+callbacks.checkpoint.every=2"], "unknown config key 'callbacks.checkpoint.every'"),
        (["callbacks.checkpoint.enabled=sometimes"], "callbacks.checkpoint.enabled must be true"),
    ],
)
def test_a_typo_under_logger_or_callbacks_is_one_line(args: list[str], expected: str) -> None:
    message = check_config_overrides(args, CONF_DIR)
    assert message is not None and "\n" not in message
    assert expected in message, message


@pytest.mark.parametrize(
    "args",
    [
        ["logger=csv", "logger.tensorboard=true"],
        ["logger=wandb", "logger.project=p", "logger.init_timeout=2.5", "logger.mode=offline"],
        ["++callbacks.extra.pace.seconds=0.08"],
        ["+callbacks.extra.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
         "+callbacks.extra.stop.monitor=val/acc", "+callbacks.extra.off=null"],
        ["callbacks.progress=none", "callbacks.checkpoint.enabled=false"],
    ],
)  # fmt: skip
def test_open_nodes_and_declared_keys_pass(args: list[str]) -> None:
    assert check_config_overrides(args, CONF_DIR) is None


def test_callbacks_extra_takes_any_entry() -> None:
    cfg = compose_config(["++callbacks.extra.pace.seconds=0.08", "+callbacks.extra.off=null"])
    assert OmegaConf.to_container(cfg.callbacks.extra) == {"pace": {"seconds": 0.08}, "off": None}


# ------------------------------------------------------------------------- data=imagenet
def test_imagenet_is_recorded_as_imagenet_and_folder_as_folder(tmp_path: Path) -> None:
    from normlab.data import build_datamodule
    from normlab.job.build import run_axes

    for option, name in (("imagenet", "imagenet"), ("folder", "folder")):
        cfg = compose_config([f"data={option}"])
        assert cfg.data.name == name and run_axes(cfg)["data"] == name
    assert compose_config(["scale=imagenet"]).data.name == "imagenet"
    assert compose_config(["scale=cifar"]).data.name == "folder"
    for name in ("imagenet", "folder"):
        with pytest.raises(ValueError, match=f"data={name} needs data.root="):
            build_datamodule({"name": name, "root": None}, 8)
        module = build_datamodule({"name": name, "root": str(tmp_path), "augment": "imagenet"}, 8)
        assert module.name == name


def test_reports_group_runs_by_data_name() -> None:
    from normlab.reporting.aggregate import seed_summary
    from normlab.reporting.paper_report import swept_axes

    frame = pd.DataFrame(
        {
            "norm": ["bn"] * 4,
            "data": ["folder", "folder", "imagenet", "imagenet"],
            "seed": [0, 1, 0, 1],
            "status": ["completed"] * 4,
            "val_acc": [0.5, 0.7, 0.2, 0.4],
        }
    )
    assert swept_axes(frame) == ["norm", "data"]
    summary = seed_summary(frame, ["norm", "data"])
    assert list(summary["data"]) == ["folder", "imagenet"]
    assert list(summary["mean"].round(6)) == [60.0, 30.0] and list(summary["n"]) == [2, 2]
