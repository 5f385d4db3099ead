"""The optimizer as Hydra builds any `_target_`: conf/optim/*.yaml name their class with
`_partial_: true`, normlab.job.optim instantiates it without normlab's own keys and calls it with the
parameter groups at the rate of the linear scaling rule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from normlab.config.schemas import OPTIM_OWN_KEYS, AdamWConfig, OptimConfig, SGDConfig
from normlab.job.optim import DecayTargets, SGDWithDecayTargets, build_optimizer, optimizer_factory
from tests.helpers import compose_config, run_in_process

pytestmark = pytest.mark.fast  # in-process: make test-fast


class RecordingSGD(torch.optim.SGD):
    """torch.optim.SGD that records the keyword arguments it was built with: a user's own
    optimizer class, given as optim._target_=tests.test_hydra_targets.RecordingSGD."""

    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, params: Any, **kwargs: Any) -> None:
        RecordingSGD.built.append(dict(kwargs))
        super().__init__(params, **kwargs)


TARGET = f"{__name__}.RecordingSGD"


def model() -> torch.nn.Module:
    """A ResNet-20 with normlab's BN: weights, biases and norm parameters in their groups."""
    from normlab.models import build_model
    from normlab.norms import norm_factory

    return build_model({"name": "resnet20"}, norm_factory("bn"), 10)


@pytest.mark.parametrize(
    ("option", "target"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)]
)
def test_optim_files_carry_their_class_as_a_partial_target(option: str, target: type) -> None:
    optim = compose_config([f"optim={option}"]).optim
    assert optim._target_ == f"torch.optim.{target.__name__}" and optim._partial_ is True
    factory = optimizer_factory(optim, lr=0.5)
    assert factory.func is target and factory.keywords["lr"] == 0.5


def test_sgd_and_adamw_schemas_share_the_common_keys_of_one_base() -> None:
    common = [f.name for f in dataclasses.fields(OptimConfig)]
    assert {"_target_", "_partial_", *OPTIM_OWN_KEYS} == set(common)
    for schema in (SGDConfig, AdamWConfig):
        assert issubclass(schema, OptimConfig)
        assert [f.name for f in dataclasses.fields(schema)][: len(common)] == common
    own = {"SGDConfig": {"momentum", "nesterov"}, "AdamWConfig": {"betas", "eps"}}
    for schema in (SGDConfig, AdamWConfig):
        assert set(schema.__annotations__) - set(common) == own[schema.__name__]


def test_normlabs_own_keys_never_reach_the_optimizer_class() -> None:
    optim = compose_config(["optim=sgd", "optim.norm_weight_decay=toward_one"]).optim
    factory = optimizer_factory(optim, lr=0.05)
    assert factory.keywords == {"lr": 0.05, "momentum": 0.9, "nesterov": False}
    optimizer = build_optimizer(model(), optim, lr=0.05)
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert groups["weights"]["weight_decay"] == 5e-4 and groups["biases"]["weight_decay"] == 0.0
    assert groups["norm_scale"]["decay_target"] == 1.0  # norm_weight_decay, read by normlab


def test_a_users_own_class_by_target_gets_its_own_arguments() -> None:
    RecordingSGD.built.clear()
    cfg = compose_config(
        ["optim=custom", f"optim._target_={TARGET}", "optim.lr=0.3", "+optim.momentum=0.5"]
    )
    optimizer = build_optimizer(model(), cfg.optim, lr=0.3)
    assert isinstance(optimizer, RecordingSGD) and isinstance(optimizer, DecayTargets)
    assert RecordingSGD.built == [{"lr": 0.3, "momentum": 0.5}]


def test_the_optimizer_gets_the_rate_the_linear_scaling_rule_gives(tmp_path: Path) -> None:
    """optim.lr holds at optim.ref_batch_size: a global batch of 16 x 2 virtual devices at
    ref_batch_size 64 trains at half optim.lr, and that is the rate the class is built with."""
    RecordingSGD.built.clear()
    overrides = ["debug=fdr", "data.train_samples=64", "data.val_samples=32", "batch_size=16",
                 "virtual_devices=2", f"optim._target_={TARGET}", "optim.lr=0.4",
                 "optim.ref_batch_size=64", "logger=none", "callbacks.progress=none",
                 "callbacks.checkpoint.enabled=false", "print_config=false", "threads=1"]  # fmt: skip
    results = run_in_process(overrides, tmp_path / "run")
    assert results["status"] == "debug", results.get("error")
    assert results["base_lr"] == 0.4 and results["lr"] == pytest.approx(0.2)
    assert RecordingSGD.built == [{"lr": pytest.approx(0.2), "momentum": 0.9, "nesterov": False}]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("torch.optim.Nope", "optim._target_=torch.optim.Nope cannot be imported (Error loading"),
        ("torch", "optim._target_=torch cannot be built (Expected a callable target"),
        ("torch.nn.Linear", "optim._target_=torch.nn.Linear is not a torch.optim.Optimizer class"),
    ],
)
def test_a_bad_target_is_one_line_naming_the_key(target: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        build_optimizer(model(), {"_target_": target, "lr": 0.1}, lr=0.1)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_bad_target_fails_the_run_as_bad_input_before_training(tmp_path: Path) -> None:
    overrides = ["optim._target_=torch.optim.Nope", "data.train_samples=32", "data.val_samples=16",
                 "logger=none", "callbacks.progress=none", "print_config=false", "threads=1"]  # fmt: skip
    with pytest.raises(ValueError, match="optim._target_=torch.optim.Nope cannot be imported"):
        run_in_process(overrides, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and results["bad_input"] is True
    assert results.get("steps", 0) == 0 and not (tmp_path / "run" / "checkpoints").exists()


def test_a_mapping_from_before_target_still_names_sgd() -> None:
    optimizer = build_optimizer(model(), {"name": "sgd", "momentum": 0.0}, lr=0.1)
    assert type(optimizer) is SGDWithDecayTargets
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert groups["weights"]["weight_decay"] == OptimConfig.weight_decay  # the schema's default
    with pytest.raises(ValueError, match="optim._target_ must name an optimizer class"):
        build_optimizer(model(), {"lr": 0.1}, lr=0.1)
