"""Every config file composes; group options are checked before Hydra starts."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from normlab.cli import check_group_overrides, group_choices, register_resolvers
from tests.helpers import CONF_DIR

register_resolvers()
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group in GROUPS for option in group_choices(CONF_DIR, group) or []],
)
def test_every_config_file_composes(override: str) -> None:
    cfg = compose_train([override])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.batch_size >= 1
    assert {"norm", "model", "data", "optim", "sched", "trainer", "logger", "callbacks"} <= set(cfg)


def test_norm_files_name_their_method() -> None:
    from normlab.norms import available_norms

    for option in group_choices(CONF_DIR, "norm") or []:
        cfg = compose_train([f"norm={option}"])
        assert cfg.norm.name in available_norms(), option


def test_run_and_sweep_dirs_differ_between_compositions() -> None:
    first = compose_train([])
    second = compose_train([])
    assert first.hydra.run.dir != second.hydra.run.dir
    assert first.hydra.sweep.dir != second.hydra.sweep.dir


def test_unknown_group_option_gives_one_line_naming_the_choices() -> None:
    message = check_group_overrides(["norm=nope"], CONF_DIR)
    assert message is not None and "\n" not in message
    assert "unknown norm 'nope'" in message and "bn, gn" in message


def test_sweep_values_are_checked_one_by_one() -> None:
    assert check_group_overrides(["norm=bn,gn", "model=resnet20"], CONF_DIR) is None
    message = check_group_overrides(["-m", "norm=bn,gm"], CONF_DIR)
    assert message is not None and "'gm'" in message
