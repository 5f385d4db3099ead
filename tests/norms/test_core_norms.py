"""The core norms against torch's functional ops, their batch (in)dependence and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normlab.norms import available_norms, build_norm, get_norm_spec, norm_factory

pytestmark = pytest.mark.fast  # in-process: make test-fast

torch.manual_seed(0)


def randomize_affine(layer: torch.nn.Module) -> None:
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)


def test_core_norms_are_registered() -> None:
    assert {"none", "bn", "ln", "in", "gn"} <= set(available_norms())


def test_bn_matches_functional_batch_norm_in_train_and_eval() -> None:
    x = torch.randn(8, 6, 5, 5, dtype=torch.float64)
    layer = build_norm("bn", 6, momentum=0.2, eps=1e-3).double()
    randomize_affine(layer)
    running_mean, running_var = (
        torch.zeros(6, dtype=torch.float64),
        torch.ones(6, dtype=torch.float64),
    )
    expected = F.batch_norm(x, running_mean, running_var, layer.weight, layer.bias, True, 0.2, 1e-3)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.running_mean, running_mean)
    torch.testing.assert_close(layer.running_var, running_var)
    layer.eval()
    expected_eval = F.batch_norm(
        x, running_mean, running_var, layer.weight, layer.bias, False, 0.2, 1e-3
    )
    torch.testing.assert_close(layer(x), expected_eval)


def test_bn_momentum_null_keeps_a_cumulative_average() -> None:
    layer = build_norm("bn", 3, momentum=None)
    batches = [torch.randn(4, 3, 2, 2) + i for i in range(3)]
    for batch in batches:
        layer(batch)
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_gn_matches_functional_group_norm(groups: int) -> None:
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    layer = build_norm("gn", 8, groups=groups).double()
    randomize_affine(layer)
    torch.testing.assert_close(layer(x), F.group_norm(x, groups, layer.weight, layer.bias, 1e-5))


def test_gn_group_size_sets_channels_per_group() -> None:
    layer = build_norm("gn", 16, groups=None, group_size=4)
    assert layer.num_groups == 4


def test_ln_matches_layer_norm_over_chw_with_per_channel_affine() -> None:
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    layer = build_norm("ln", 6).double()
    randomize_affine(layer)
    normalized = F.layer_norm(x, x.shape[1:], eps=1e-5)
    expected = normalized * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_in_matches_functional_instance_norm() -> None:
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    layer = build_norm("in", 6).double()
    randomize_affine(layer)
    expected = F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=1e-5)
    torch.testing.assert_close(layer(x), expected)


def test_none_is_identity_and_activation_is_applied() -> None:
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(build_norm("none", 3)(x), x)
    torch.testing.assert_close(build_norm("none", 3, activation="relu")(x), x.relu())
    layer = build_norm("gn", 4, activation="relu", groups=2)
    assert (layer(torch.randn(2, 4, 3, 3)) >= 0).all()


@pytest.mark.parametrize("name", ["ln", "in", "gn"])
def test_per_sample_norms_are_batch_independent(name: str) -> None:
    layer = build_norm(name, 8)
    x = torch.randn(4, 8, 5, 5)
    other = x.clone()
    other[1:] = torch.randn(3, 8, 5, 5) * 3 + 2
    torch.testing.assert_close(layer(x)[0], layer(other)[0])
    torch.testing.assert_close(layer(x[:1])[0], layer(x)[0])
    assert not layer.batch_dependent
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(other)[0])


def test_bn_is_batch_dependent_in_training() -> None:
    layer = build_norm("bn", 8)
    x = torch.randn(4, 8, 5, 5)
    other = x.clone()
    other[1:] = torch.randn(3, 8, 5, 5) * 3 + 2
    assert not torch.allclose(layer(x)[0], layer(other)[0])
    assert layer.batch_dependent and get_norm_spec("bn").batch_dependent


def test_unknown_norm_names_the_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown norm 'nope'; valid choices: .*bn.*gn"):
        build_norm("nope", 8)


def test_groups_not_dividing_channels_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"groups=32 does not divide num_channels=16; valid groups: 1, 2, 4, 8, 16"
    ):
        build_norm("gn", 16, groups=32)
    with pytest.raises(ValueError, match="exactly one of groups or group_size"):
        build_norm("gn", 16, groups=4, group_size=4)


def test_unknown_parameter_names_the_valid_parameters() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown parameter\(s\) momentum; valid parameters: eps, group_size, groups",
    ):
        norm_factory("gn", momentum=0.1)


def test_bad_momentum_and_eps_are_rejected() -> None:
    with pytest.raises(ValueError, match="momentum"):
        build_norm("bn", 4, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        build_norm("bn", 4, eps=0.0)


def test_batch_dependent_layer_refuses_a_batch_of_one() -> None:
    with pytest.raises(ValueError, match="per-device batch of 1"):
        build_norm("bn", 4, activation="relu").check_batch_size(1)
    build_norm("gn", 4, groups=2).check_batch_size(1)
