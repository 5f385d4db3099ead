"""Proxy Norm, EvoNorm-S0, FRN+TLU and Weight Standardization: formulas written out here,
gradients, batch independence, train == eval, state round trips, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.models import build_model
from normlab.norms import build_norm, get_norm_spec, norm_factory
from normlab.norms.proxy import midpoint_quantiles
from tests.helpers import sgd_steps

pytestmark = pytest.mark.fast  # in-process: make test-fast

FUSED = ["proxy_ln", "proxy_gn", "evonorm_s0", "frn"]


def randomize(layer: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.8 + 0.2)


@pytest.mark.parametrize(
    ("activation", "mean", "var"), [("relu", 0.39845, 0.33803), ("silu", 0.20605, 0.31000)]
)
def test_proxy_statistics_match_the_200_point_reference(
    activation: str, mean: float, var: float
) -> None:
    layer = build_norm("proxy_ln", 3, activation=activation)
    m, v = layer.proxy_statistics()
    torch.testing.assert_close(m, torch.full((3,), mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(v, torch.full((3,), var), atol=1e-4, rtol=0)


def test_proxy_statistics_approach_the_exact_relu_moments_with_many_points() -> None:
    layer = build_norm("proxy_ln", 2, activation="relu", proxy_points=20000).double()
    m, v = layer.proxy_statistics()
    assert abs(m[0].item() - 0.39894) < 2e-5 and abs(v[0].item() - 0.34085) < 2e-4
    assert abs(midpoint_quantiles(200).var(unbiased=False).item() - 0.99360) < 1e-5


def reference_pn(x: torch.Tensor, layer: nn.Module, groups: int, act) -> torch.Tensor:  # type: ignore[no-untyped-def]
    n, c, h, w = x.shape
    g = x.reshape(n, groups, -1)
    y = (
        (g - g.mean(2, keepdim=True)) / torch.sqrt(g.var(2, unbiased=False, keepdim=True) + 1e-5)
    ).reshape(n, c, h, w)
    gamma, beta = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    z = act(gamma * y + beta)
    k = torch.arange(200, dtype=torch.float64)
    u = torch.erfinv(2 * (k + 0.5) / 200 - 1) * 2**0.5
    proxy = (1 + layer.proxy_weight)[:, None] * u + layer.proxy_bias[:, None]
    p = act(layer.weight[:, None] * proxy + layer.bias[:, None])
    m, v = p.mean(1), ((p - p.mean(1, keepdim=True)) ** 2).mean(1)
    return (z - m.view(1, -1, 1, 1)) / torch.sqrt(v.view(1, -1, 1, 1) + 0.03)


@pytest.mark.parametrize(("name", "groups"), [("proxy_ln", 1), ("proxy_gn", 2)])
def test_proxy_norm_output_formula(name: str, groups: int) -> None:
    params = {"groups": groups} if name == "proxy_gn" else {}
    layer = build_norm(name, 4, activation="relu", **params).double()
    randomize(layer)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(layer(x), reference_pn(x, layer, groups, torch.relu))


def test_proxy_norm_without_activation_is_scaled_norm_without_shift() -> None:
    layer = build_norm("proxy_gn", 4, groups=2).double()
    assert layer.bias is None and not layer.proxy_parameters()
    randomize(layer)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    expected = F.group_norm(x, 2, eps=1e-5) * layer.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_proxy_gradients_reach_the_proxy_parameters() -> None:
    layer = build_norm("proxy_ln", 3, activation="relu", proxy_points=16).double()
    randomize(layer)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias, layer.proxy_weight, layer.proxy_bias)

    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))
    out = layer(x).pow(2).sum()
    grads = torch.autograd.grad(out, params)
    assert all(g.abs().sum() > 0 for g in grads)
    # finite-difference check of the proxy-weight gradient
    eps = 1e-6
    with torch.no_grad():
        layer.proxy_weight[0] += eps
        plus = layer(x).pow(2).sum()
        layer.proxy_weight[0] -= 2 * eps
        minus = layer(x).pow(2).sum()
        layer.proxy_weight[0] += eps
    assert abs((plus - minus).item() / (2 * eps) - grads[2][0].item()) < 1e-5


def reference_evonorm(x: torch.Tensor, layer: nn.Module, groups: int, gated: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    var = x.reshape(n, groups, -1).var(2, unbiased=False, keepdim=True)
    std = torch.sqrt(var + 1e-5).repeat_interleave(c // groups * h * w, dim=2).reshape(n, c, h, w)
    num = x * torch.sigmoid(layer.v.view(1, -1, 1, 1) * x) if gated else x
    return num / std * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("gated", [True, False])
def test_evonorm_s0_formula(gated: bool) -> None:
    layer = build_norm("evonorm_s0", 4, activation="relu" if gated else None, groups=2).double()
    randomize(layer)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 3
    torch.testing.assert_close(layer(x), reference_evonorm(x, layer, 2, gated))


def test_evonorm_without_activation_still_normalizes() -> None:
    layer = build_norm("evonorm_s0", 4, groups=1)
    out = layer(torch.randn(2, 4, 6, 6) * 50)
    assert out.reshape(2, -1).var(1, unbiased=False).allclose(torch.ones(2), atol=0.05)


def test_frn_tlu_formula_and_learnable_eps() -> None:
    layer = build_norm("frn", 4, activation="relu", learnable_eps=True).double()
    randomize(layer)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    eps = 1e-6 + layer.eps_l.abs()
    y = x / torch.sqrt(x.pow(2).mean((2, 3), keepdim=True) + eps)
    y = y * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), torch.maximum(y, layer.tau.view(1, -1, 1, 1)))
    layer(x).sum().backward()
    assert layer.eps_l.grad is not None and layer.tau.grad is not None


def test_frn_without_activation_has_no_tlu_and_other_activations_follow_frn() -> None:
    plain = build_norm("frn", 4)
    assert plain.tau is None
    x = torch.randn(2, 4, 3, 3)
    silu = build_norm("frn", 4, activation="silu")
    torch.testing.assert_close(silu(x), F.silu(plain(x)))


@pytest.mark.parametrize("name", FUSED)
def test_gradcheck_float64(name: str) -> None:
    params = {"proxy_points": 16} if name.startswith("proxy") else {}
    if name in ("proxy_gn", "evonorm_s0"):
        params["groups"] = 2
    layer = build_norm(name, 4, activation="relu", **params).double()
    randomize(layer)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("name", FUSED)
def test_batch_independent_and_train_equals_eval(name: str) -> None:
    layer = build_norm(name, 8, activation="relu")
    assert not layer.batch_dependent
    x = torch.randn(4, 8, 5, 5)
    other = x.clone()
    other[1:] = torch.randn(3, 8, 5, 5) * 3 + 2
    torch.testing.assert_close(layer(x)[0], layer(other)[0])
    train_out = layer.train()(x)
    torch.testing.assert_close(layer.eval()(x), train_out)


@pytest.mark.parametrize("name", FUSED)
def test_state_dict_round_trip(name: str) -> None:
    layer = build_norm(name, 8, activation="relu")
    randomize(layer, seed=3)
    fresh = build_norm(name, 8, activation="relu")
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(fresh(x), layer(x))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("proxy_gn", {"groups": 3}, "groups=3 does not divide"),
        ("proxy_ln", {"proxy_points": 1}, "proxy_points must be an int >= 2"),
        ("proxy_ln", {"proxy_eps": 0.0}, "proxy_eps must be > 0"),
        ("evonorm_s0", {"groups": 5}, "groups=5 does not divide"),
        ("frn", {"eps": -1.0}, "eps must be > 0"),
    ],
)
def test_bad_parameters(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_norm(name, 8, activation="relu", **params)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("preact", [False, True])
def test_builds_into_resnet20(name: str, preact: bool) -> None:
    """The method's own layers stand where BN would, and a batch of 2 goes through them both
    ways: finite logits of the right shape, a gradient on every parameter of every norm layer."""
    model = build_model({"name": "resnet20", "preact": preact}, norm_factory(name), 10)
    layers = [m for m in model.modules() if isinstance(m, get_norm_spec(name).layer)]
    assert len(layers) == 19  # one after (or, pre-activation, before) each of the 19 convs
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    for layer in layers:
        for pname, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (pname, layer)
    assert any(p.grad.abs().sum() > 0 for layer in layers for p in layer.parameters())


def test_weight_standardization_standardizes_every_conv() -> None:
    from timm.layers import StdConv2d

    model = build_model(
        {"name": "resnet20", "weight_standardization": True}, norm_factory("gn"), 10
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(c, StdConv2d) for c in convs)
    conv = convs[3]
    w = conv.weight.reshape(conv.out_channels, -1)
    standardized = F.batch_norm(
        w.reshape(1, conv.out_channels, -1), None, None, training=True, momentum=0.0, eps=conv.eps
    ).reshape_as(w)
    torch.testing.assert_close(
        standardized.mean(1), torch.zeros(conv.out_channels), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        standardized.std(1, unbiased=False), torch.ones(conv.out_channels), atol=1e-3, rtol=0
    )
    x = torch.randn(2, conv.in_channels, 8, 8)
    torch.testing.assert_close(
        conv(x), F.conv2d(x, standardized.reshape_as(conv.weight), None, conv.stride, conv.padding)
    )


def test_weight_standardized_gn_resnet_trains() -> None:
    torch.manual_seed(0)
    model = build_model(
        {"name": "resnet20", "weight_standardization": True}, norm_factory("gn"), 10
    )
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    losses = sgd_steps(model, x, y, steps=15, lr=0.05, momentum=0.9)
    assert losses[-1] < 0.5 * losses[0]
