"""Every config file composes and is an instance of its schema; group options, keys and values
are checked before Hydra starts."""

from __future__ import annotations

import functools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from normlab.cli import check_config_overrides, check_group_overrides, group_choices
from normlab.config.resolvers import register_resolvers
from normlab.config.schemas import (
    DATA_SCHEMAS,
    GROUP_SCHEMAS,
    MODEL_SCHEMAS,
    DigitsConfig,
    LoaderConfig,
    ResNetConfig,
    TrainConfig,
    field_names,
)
from tests.helpers import CONF_DIR

pytestmark = pytest.mark.fast  # in-process: make test-fast

register_resolvers()
GROUPS = sorted(
    p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment_scale")
)


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


# ------------------------------------------------------------------ schemas (normlab.config)
TYPED_GROUPS = ("model", "data", "optim", "sched")
REQUIRED = {"optim=custom": ["optim._target_=torch.optim.SGD", "optim.lr=0.1"]}


@functools.cache
def composed(override: str) -> DictConfig:
    """`python train.py <override>` composed without Hydra's own node (cached per override)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[override, *REQUIRED.get(override, [])])


@pytest.mark.parametrize(
    "override",
    ["seed=0"]
    + [f"{group}={option}" for group in TYPED_GROUPS for option in group_choices(CONF_DIR, group)],
)
def test_every_option_of_every_typed_group_validates_against_its_schema(override: str) -> None:
    """The top level and each model/data/optim/sched file are instances of their schema: every
    key declared, of its declared type, none left without a value."""
    cfg = composed(override)
    assert OmegaConf.get_type(cfg) is TrainConfig
    assert not OmegaConf.missing_keys(cfg)
    for group in TYPED_GROUPS:
        schema = OmegaConf.get_type(cfg[group])
        assert schema in GROUP_SCHEMAS[group].values(), (group, schema)
        values = OmegaConf.to_container(cfg, resolve=True)[group]  # type: ignore[index]
        instance = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
        assert isinstance(instance, schema)
    assert MODEL_SCHEMAS[cfg.model.source] is OmegaConf.get_type(cfg.model)
    assert DATA_SCHEMAS[cfg.data.name] is OmegaConf.get_type(cfg.data)


@pytest.mark.parametrize("option", group_choices(CONF_DIR, "model"))
def test_every_model_file_names_a_model_the_registry_builds(option: str) -> None:
    from normlab.models.registry import RESNETS

    cfg = composed(f"model={option}")
    assert cfg.model.source == "timm" or cfg.model.name in RESNETS


@pytest.mark.parametrize("option", group_choices(CONF_DIR, "optim"))
def test_every_optim_file_builds_its_optimizer(option: str) -> None:
    import torch

    from normlab.job.optim import build_optimizer

    cfg = composed(f"optim={option}")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    optimizer = build_optimizer(model, OmegaConf.to_container(cfg.optim), lr=0.1)  # type: ignore[arg-type]
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("option", group_choices(CONF_DIR, "sched"))
def test_every_sched_file_gives_a_schedule(option: str) -> None:
    from normlab.job.optim import lr_lambda

    sched = dict(composed(f"sched={option}").sched)  # as the LightningModule holds it
    factor = lr_lambda(sched, total_steps=100, steps_per_epoch=10)
    assert 0.0 <= factor(99) <= 1.0


def test_variants_state_only_what_differs_from_their_base() -> None:
    """The ResNets differ only in name; imagenet has every loader key of the data sets."""
    resnets = [composed(f"model={o}").model for o in group_choices(CONF_DIR, "model")]
    resnets = [OmegaConf.to_container(m) for m in resnets if m.source == "normlab"]
    assert len(resnets) == 5
    assert all({**m, "name": None} == {**resnets[0], "name": None} for m in resnets)
    loader = set(field_names(LoaderConfig))
    for option in group_choices(CONF_DIR, "data"):
        assert loader <= set(composed(f"data={option}").data), option
    assert composed("data=imagenet").data.holdout_samples == 0


@pytest.mark.parametrize(
    ("schema", "key"), [(DigitsConfig, "data"), (ResNetConfig, "model")], ids=["data", "model"]
)
def test_builders_accept_exactly_the_schema_keys(schema: type, key: str) -> None:
    from normlab.data import build_datamodule
    from normlab.models import build_model
    from normlab.norms import norm_factory

    valid = [k for k in field_names(schema) if k != "name"]
    with pytest.raises(ValueError, match="unknown .*option") as error:
        if key == "data":
            build_datamodule({"name": "digits", "nosuch": 1}, 8)
        else:
            build_model({"name": "resnet20", "nosuch": 1}, norm_factory("bn"), 10)
    assert all(k in str(error.value) for k in valid)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["optim.lr=fast"], "optim.lr must be a number, got 'fast'"),
        (["resume=maybe"], "resume must be true or false, got 'maybe'"),
        (["seed=1.5"], "seed must be an integer, got 1.5"),
        (["sched.warmup_epochs=x"], "sched.warmup_epochs must be a number, got 'x'"),
        (["optim=adamw", "optim.betas=[0.9,x]"], "optim.betas[1] must be a number, got 'x'"),
        (["optim.norm_weight_decay=1"], "optim.norm_weight_decay must be true or false or a"),
        (["model.name=null"], "model.name must be a string, got None"),
        (["-m", "batch_size=8,16,x"], "batch_size must be an integer, got 'x'"),
        (["-m", "data.holdout_samples=0,x"], "data.holdout_samples must be an integer, got 'x'"),
        (["optim.momentm=0.9"], "unknown config key 'optim.momentm' (to add a new key write"),
        (["optim.momentm=0.9"], "did you mean 'optim.momentum'?"),
        (["norm.momentm=0.9"], "did you mean 'norm.momentum'?"),
        (["optim=adamw", "optim.momentum=0.9"], "unknown config key 'optim.momentum'"),
        (["optim=custom"], "optim._target_, optim.lr must be set (no default)"),
    ],
)
def test_schema_errors_are_one_line(args: list[str], expected: str) -> None:
    message = check_config_overrides(args, CONF_DIR)
    assert message is not None and "\n" not in message
    assert expected in message, message


@pytest.mark.parametrize(
    "args",
    [
        ["optim=adamw", "optim._target_=torch.optim.RAdam", "optim.lr=0.01"],
        ["optim=custom", "optim._target_=torch.optim.RMSprop", "optim.lr=0.01", "+optim.alpha=0.9"],
        ["-m", "batch_size=2,4", "optim.lr=0.1,1", "sched=step", "sched.milestones=[1,2.5]"],
        ["+precise_bn.data.corruption=gaussian_noise", "+trainer.gradient_clip_val=1.0"],
        ["model=timm", "+model.timm_kwargs.drop_rate=0.1"],
    ],
)
def test_valid_overrides_pass_the_schema_checks(args: list[str]) -> None:
    assert check_config_overrides(args, CONF_DIR) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["norm.momentum=abc"], "norm.momentum must be a number, got 'abc'"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs must be an integer, got 'abc'"),
        (["-m", "norm.momentum=0.1,abc"], "norm.momentum must be a number, got 'abc'"),
        (["norm=gn", "norm.groups=2.5"], "norm.groups must be an integer, got 2.5"),
        (["norm=gn", "norm.groups=4", "trainer.max_epochs=3", "norm.eps=1e-3"], None),
    ],
)
def test_keys_of_open_groups_are_type_checked_against_their_file(
    overrides: list[str], message: str | None
) -> None:
    """norm and trainer have no schema (norm parameters belong to the registry, trainer ones to
    Lightning), so their overrides are checked against the chosen file's values."""
    found = check_config_overrides(overrides, CONF_DIR)
    assert (found is None) if message is None else (found is not None and message in found)


def test_a_value_given_to_a_group_of_keys_names_its_keys() -> None:
    """precise_bn=1000 crashed deep inside the run ('str' has no attribute 'get'). debug is a
    config group (conf/debug): debug=fdr chooses an option, debug.<key>=... sets a key."""
    message = check_config_overrides(["precise_bn=1000"], CONF_DIR)
    assert message is not None and "precise_bn is a group of keys" in message
    assert "num_samples" in message and "\n" not in message
    assert check_config_overrides(["debug=fdr", "debug.stop_after_epochs=1"], CONF_DIR) is None


@pytest.mark.parametrize(
    "args",
    [
        ["-sc", "install=bash"],
        ["--shell-completion", "query=bash"],
        ["-sc", "query=bash"],
        ["--help", "norm=gn"],
        ["-cn", "train", "norm=gn"],
        ["--config-name=train", "norm=gn"],
    ],
)
def test_hydra_own_flags_pass_preflight_untouched(args: list[str]) -> None:
    """Tab completion (`-sc install=bash`, `-sc query=bash` with the partial line in COMP_LINE),
    help and another config name are Hydra's to answer: preflight judges none of their words."""
    assert check_group_overrides(args, CONF_DIR) is None
    assert check_config_overrides(args, CONF_DIR) is None


def readme_preset_rows() -> dict[str, dict[str, str]]:
    """The README's "Reproduce a paper" table: preset name -> {column header: cell}."""
    lines = (CONF_DIR.parent / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| preset |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return rows


def test_the_readme_names_every_preset_with_the_runs_its_grid_holds() -> None:
    rows = readme_preset_rows()
    presets = group_choices(CONF_DIR, "experiment")
    assert sorted(rows) == sorted(presets)
    for preset in presets:
        cfg = compose_train([f"experiment={preset}"])
        grid = cfg.hydra.sweeper.params
        runs = functools.reduce(lambda n, axis: n * len(str(grid[axis]).split(",")), grid, 1)
        assert rows[preset]["runs"] == str(runs), preset
        assert f"experiment={preset}`" in rows[preset]["command"]
