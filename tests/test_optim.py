"""Parameter groups, decay toward one, the linear scaling rule and the schedules."""

from __future__ import annotations

import pytest
import torch

from normlab.job.optim import (
    SGDWithDecayTargets,
    build_optimizer,
    build_param_groups,
    lr_lambda,
    scaled_lr,
    split_parameters,
)
from normlab.models import build_model
from normlab.norms import norm_factory

pytestmark = pytest.mark.fast  # in-process: make test-fast

CFG = {"_target_": "torch.optim.SGD", "momentum": 0.0, "weight_decay": 0.1, "nesterov": False}


def resnet() -> torch.nn.Module:
    return build_model({"name": "resnet20"}, norm_factory("bn"), 10)


def test_norm_parameters_are_split_from_weights_and_biases() -> None:
    model = resnet()
    split = split_parameters(model)
    assert len(split.norm_scales) == len(split.norm_other) == 19  # gamma and beta of 19 BN layers
    assert len(split.biases) == 1  # the classifier's bias
    total = sum(len(v) for v in vars(split).values())
    assert total == len(list(model.parameters()))


@pytest.mark.parametrize(("mode", "decays"), [(False, 0.0), (True, 0.1)])
def test_norm_weight_decay_switch(mode: bool, decays: float) -> None:
    groups = {g["group"]: g for g in build_param_groups(resnet(), 0.1, mode)}
    assert groups["weights"]["weight_decay"] == 0.1 and groups["biases"]["weight_decay"] == 0.0
    assert (
        groups["norm"]["weight_decay"] == decays and groups["norm_scale"]["weight_decay"] == decays
    )


def test_decay_toward_one_pulls_gamma_to_one_and_beta_to_zero() -> None:
    model = resnet()
    bn = model.stem[1].norm
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.bias.fill_(2.0)
    optimizer = build_optimizer(model, {**CFG, "norm_weight_decay": "toward_one"}, lr=1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    # one step of plain gradient descent on 0.1/2 * (gamma - 1)^2 and 0.1/2 * beta^2
    torch.testing.assert_close(bn.weight, torch.full_like(bn.weight, 3.0 - 0.1 * 2.0))
    torch.testing.assert_close(bn.bias, torch.full_like(bn.bias, 2.0 - 0.1 * 2.0))


def test_bad_norm_weight_decay_value_names_the_choices() -> None:
    with pytest.raises(ValueError, match="false, true, toward_one"):
        build_param_groups(resnet(), 0.1, "sometimes")


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.1, 512, 256) == pytest.approx(0.2)
    assert scaled_lr(0.1, 2, 256) == pytest.approx(0.1 / 128)
    assert scaled_lr(0.1, 2, None) == 0.1


def test_cosine_with_warmup_and_step_schedules() -> None:
    cosine = lr_lambda({"name": "cosine", "warmup_epochs": 1}, total_steps=100, steps_per_epoch=10)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(55) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    step = lr_lambda(
        {"name": "step", "milestones": [2, 4], "gamma": 0.1}, total_steps=60, steps_per_epoch=10
    )
    assert step(19) == 1.0 and step(20) == pytest.approx(0.1) and step(45) == pytest.approx(0.01)
    short = lr_lambda({"name": "cosine", "warmup_epochs": 1}, total_steps=10, steps_per_epoch=10)
    assert short(2) == pytest.approx(1.0), "warm-up capped at a fifth of the run"


def test_a_key_not_given_takes_the_schemas_default() -> None:
    """optim.py used to default warmup_epochs to 0 where CosineConfig says 1, and milestones
    to [] where StepConfig says [100, 150]: the schema is the one place a default lives."""
    cosine = lr_lambda({"name": "cosine"}, total_steps=100, steps_per_epoch=10)
    assert cosine(0) == pytest.approx(0.1), "CosineConfig.warmup_epochs = 1"
    step = lr_lambda({"name": "step"}, total_steps=2000, steps_per_epoch=10)
    assert (
        step(999) == 1.0 and step(1000) == pytest.approx(0.1) and step(1500) == pytest.approx(0.01)
    )
    with pytest.raises(ValueError, match="sched.milestone is no key of sched=step"):
        lr_lambda({"name": "step", "milestone": [1]}, total_steps=10, steps_per_epoch=1)
    with pytest.raises(ValueError, match="sched.name must be one of cosine, step"):
        lr_lambda({"name": "linear"}, total_steps=10, steps_per_epoch=1)


def test_decay_toward_one_also_applies_when_the_step_runs_a_closure() -> None:
    """Lightning passes optimizer.step a closure that zeroes and recomputes the gradients: the
    decay toward one is added after it, not to the gradients it replaces."""
    model = resnet()
    bn = model.stem[1].norm
    with torch.no_grad():
        bn.weight.fill_(3.0)
    optimizer = build_optimizer(model, {**CFG, "norm_weight_decay": "toward_one"}, lr=1.0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        return torch.zeros(())

    optimizer.step(closure)
    torch.testing.assert_close(bn.weight, torch.full_like(bn.weight, 3.0 - 0.1 * 2.0))


def optim_cfg(overrides: list[str], **changes: object) -> dict:
    """The optim group as `python train.py <overrides>` composes it, with `changes`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.helpers import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return {**OmegaConf.to_container(cfg.optim), **changes}  # type: ignore[dict-item]


def adamw_cfg(**changes: object) -> dict:
    return optim_cfg(["optim=adamw"], **changes)


def test_adamw_from_its_config_file_builds_normlabs_groups_and_steps() -> None:
    torch.manual_seed(0)
    model = resnet()
    optimizer = build_optimizer(model, adamw_cfg(), lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert groups["weights"]["weight_decay"] == 0.05 and groups["norm"]["weight_decay"] == 0.0
    assert tuple(groups["weights"]["betas"]) == (0.9, 0.999)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_adamw_decays_gamma_toward_one_decoupled() -> None:
    """In AdamW's groups the decay toward one is decoupled, as AdamW's own weight decay:
    p -= lr * decay * (p - 1), whatever the gradient."""
    model = resnet()
    bn = model.stem[1].norm
    with torch.no_grad():
        bn.weight.fill_(3.0)
    cfg = adamw_cfg(weight_decay=0.1, norm_weight_decay="toward_one")
    optimizer = build_optimizer(model, cfg, lr=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(bn.weight, torch.full_like(bn.weight, 3.0 - 0.5 * 0.1 * 2.0))


@pytest.mark.parametrize("target", ["torch.optim.AdamW", "torch.optim.RMSprop"])
def test_a_flagged_step_changes_nothing(target: str) -> None:
    """The divergence guard: fused kernels (AdamW) read the flag on the device; others
    (RMSprop) on the host."""
    from normlab.job.lit import guard_optimizer

    model = resnet()
    cfg = {"_target_": target, "weight_decay": 0.1, "norm_weight_decay": "toward_one"}
    optimizer = build_optimizer(model, cfg, lr=0.1)
    flag = torch.ones(1)
    guard_optimizer(optimizer, flag)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    flag.zero_()
    optimizer.step()
    assert not torch.equal(before[0], next(model.parameters()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"_target_": "torch.optim.Nope"}, "optim._target_=torch.optim.Nope cannot be imported"),
        ({"_target_": "nosuchmodule.Opt"}, "optim._target_=nosuchmodule.Opt cannot be imported"),
        ({"_target_": "torch.nn.Linear"}, "is not a torch.optim.Optimizer class"),
        ({"momentum": 0.9}, r"optim.momentum is no argument of torch.optim.adamw.AdamW \(its"),
        ({"_target_": None, "name": "adam"}, "optim.name must be sgd, got 'adam'"),
    ],
)
def test_bad_optimizer_choice_is_one_clear_line(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        build_optimizer(resnet(), adamw_cfg(**changes), lr=0.1)
    assert "\n" not in str(error.value)


def test_custom_optimizer_by_target_with_its_own_arguments() -> None:
    cfg = optim_cfg(
        ["optim=custom", "optim._target_=torch.optim.RMSprop", "optim.lr=0.01", "+optim.alpha=0.9"]
    )
    optimizer = build_optimizer(resnet(), cfg, lr=0.01)
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert {g["alpha"] for g in optimizer.param_groups} == {0.9}


def test_sgd_by_name_is_torch_sgd_with_the_config_file_values() -> None:
    optimizer = build_optimizer(resnet(), optim_cfg([]), lr=0.1)
    assert type(optimizer) is SGDWithDecayTargets and isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, False, 5e-4)
