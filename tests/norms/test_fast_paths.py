"""Every fast forward (native kernels, folded affines, hand-written backward) equals the layer's
`_reference_forward` (the formula written out): outputs, input and parameter gradients and
running buffers over several training steps, then evaluation, in float64 and float32."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from normlab.norms import build_norm

pytestmark = pytest.mark.fast  # in-process: make test-fast

SHAPE = (4, 8, 5, 6)


def randomize(layer: nn.Module, seed: int = 0) -> None:
    """Parameters in [0.2, 1) (signs varied for biases), so no term vanishes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            value = torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.8 + 0.2
            if "bias" in name:
                value = value * torch.sign(torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.4)
            p.copy_(value)


def run(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, reference: bool) -> dict:
    """Output, input gradient, parameter gradients and buffers after one forward+backward."""
    inp = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer._reference_forward(inp) if reference else layer(inp)
    out.backward(grad)
    result = {"out": out.detach(), "grad_x": inp.grad}
    result |= {f"grad_{n}": p.grad for n, p in layer.named_parameters()}
    result |= {f"buffer_{n}": b.clone() for n, b in layer.named_buffers()}
    recorded = getattr(layer, "_recorded", None)  # "record" mode accumulators
    if recorded is not None:
        result["recorded"] = recorded.clone()
    return result


def assert_same(fast: dict, ref: dict, dtype: torch.dtype, what: str) -> None:
    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    assert fast.keys() == ref.keys(), what
    for key in ref:
        if ref[key] is None:
            assert fast[key] is None, f"{what}: {key}"
            continue
        assert fast[key] is not None, f"{what}: {key} missing"
        scale = ref[key].abs().max().clamp_min(1.0)
        torch.testing.assert_close(
            fast[key] / scale, ref[key] / scale, msg=lambda m, k=key: f"{what} {k}: {m}", **tol
        )


def check_fast_equals_reference(
    name: str,
    params: dict[str, Any],
    activation: str | None = None,
    dtype: torch.dtype = torch.float64,
    shape: tuple[int, int, int, int] = SHAPE,
    steps: int = 3,
    setup: Any = None,
) -> None:
    """Train `steps` forward+backward passes, then one in eval mode, on both paths."""
    torch.manual_seed(1)
    layer = build_norm(name, shape[1], activation=activation, **params).to(dtype)
    randomize(layer)
    if setup is not None:
        setup(layer)
    fast, ref = copy.deepcopy(layer), copy.deepcopy(layer)
    for step in range(steps + 1):
        if step == steps:
            fast.eval(), ref.eval()
        x = (torch.randn(shape, dtype=dtype) * 2 + 0.5).to(dtype)
        grad = torch.randn(shape, dtype=dtype)
        what = f"{name} {params} act={activation} {dtype} step {step}"
        assert_same(run(fast, x, grad, False), run(ref, x, grad, True), dtype, what)


BRN = {"warmup_steps": 0, "r_max_steps": 2, "d_max_steps": 3, "r_max": 1.5, "d_max": 0.5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("momentum", [0.3, None])
@pytest.mark.parametrize("mode", ["ema", "batch", "population", "record"])
def test_brn(dtype: torch.dtype, momentum: float | None, mode: str) -> None:
    def setup(layer: nn.Module) -> None:
        with torch.no_grad():
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_std.uniform_(0.5, 3.0)
        layer.stats_mode = mode

    check_fast_equals_reference("brn", BRN | {"momentum": momentum}, None, dtype, setup=setup)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("learnable_eps", [False, True])
def test_frn(dtype: torch.dtype, activation: str | None, learnable_eps: bool) -> None:
    params = {"learnable_eps": learnable_eps}
    check_fast_equals_reference("frn", params, activation, dtype, steps=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_evonorm_s0(dtype: torch.dtype, activation: str | None, groups: int) -> None:
    check_fast_equals_reference("evonorm_s0", {"groups": groups}, activation, dtype, steps=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
@pytest.mark.parametrize(("name", "params"), [("proxy_ln", {}), ("proxy_gn", {"groups": 2})])
def test_proxy(dtype: torch.dtype, activation: str | None, name: str, params: dict) -> None:
    check_fast_equals_reference(name, params | {"proxy_points": 32}, activation, dtype, steps=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["ema", "batch", "population", "record"])
@pytest.mark.parametrize(
    "params",
    [
        {"groups": 2, "examples_per_group": 2},
        {"groups": 4, "examples_per_group": 1, "momentum": None},
        {"groups": 1, "examples_per_group": 4, "alpha": 0.3},
        {"groups": 8, "examples_per_group": 2, "alpha": 1.0, "momentum": None},
    ],
)
def test_batch_group(dtype: torch.dtype, mode: str, params: dict) -> None:
    def setup(layer: nn.Module) -> None:
        with torch.no_grad():
            layer.running_m1.uniform_(-0.5, 0.5)
            layer.running_m2.copy_(layer.running_m1.square() + torch.rand(8, dtype=dtype) + 0.5)
        layer.stats_mode = mode

    check_fast_equals_reference("batch_group", params, None, dtype, setup=setup)


def compiled_matches_eager(name: str, params: dict[str, Any], activation: str | None) -> None:
    """Two training steps and one evaluation of the compiled layer equal the eager layer's."""
    torch.manual_seed(0)
    eager = build_norm(name, 8, activation=activation, **params)
    randomize(eager)
    compiled = build_norm(name, 8, activation=activation, compile=True, **params)
    compiled.load_state_dict(eager.state_dict())
    assert type(compiled) is type(eager) and compiled.batch_dependent == eager.batch_dependent
    for step in range(3):
        if step == 2:
            eager.eval(), compiled.eval()
        x, grad = torch.randn(SHAPE) * 2 + 0.5, torch.randn(SHAPE)
        assert_same(run(compiled, x, grad, False), run(eager, x, grad, False), torch.float32, name)


def test_compile_parameter_is_accepted_and_checked() -> None:
    from normlab.norms import available_norms, get_norm_spec

    for name in available_norms():
        assert get_norm_spec(name).defaults["compile"] is False
    with pytest.raises(ValueError, match="compile must be true or false"):
        build_norm("gn", 8, compile="yes")


@pytest.mark.slow  # inductor's first compile takes 10-50 s on these CPUs
def test_compiled_frn_equals_eager() -> None:
    compiled_matches_eager("frn", {}, "relu")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params", "activation"),
    [
        ("brn", BRN, None),
        ("evonorm_s0", {"groups": 2}, "relu"),
        ("proxy_gn", {"groups": 2, "proxy_points": 32}, "relu"),
        ("batch_group", {"groups": 2, "examples_per_group": 2, "alpha": 0.5}, None),
        ("bn", {}, "relu"),
    ],
)
def test_compiled_equals_eager(name: str, params: dict, activation: str | None) -> None:
    compiled_matches_eager(name, params, activation)


@pytest.mark.parametrize("dims", [(2, 3), (0, 2, 3), (1, 3)])
def test_fast_statistics_gradcheck(dims: tuple[int, ...]) -> None:
    from normlab.norms._fast import mean_square, var_mean

    x = (torch.randn(4, 3, 2, 5, dtype=torch.float64) + 0.7).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: var_mean(t, dims), (x,))
    assert torch.autograd.gradcheck(lambda t: var_mean(t, dims)[0], (x,))  # mean unused
    assert torch.autograd.gradcheck(lambda t: mean_square(t, dims), (x,))
    var, mean = var_mean(x, dims)
    ref_var, ref_mean = torch.var_mean(x, dims, unbiased=False, keepdim=True)
    torch.testing.assert_close(var, ref_var)
    torch.testing.assert_close(mean, ref_mean)


def test_batch_norm_train_gradcheck_and_equals_torch() -> None:
    from normlab.norms._fast import batch_norm_train, channel_var_mean

    x = (torch.randn(4, 3, 2, 5, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fast(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return batch_norm_train(x, *channel_var_mean(x), w, b, 1e-5)

    assert torch.autograd.gradcheck(fast, (x, w, b))
    expected = torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)
    torch.testing.assert_close(fast(x, w, b), expected)
