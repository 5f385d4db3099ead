"""Batch-dependent norms (bn, ghost_bn, batch_group, bgn, brn, iebn, syncbn) and the
population-statistics interface: formulas against independent float64 computations."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from normlab.models import build_model
from normlab.norms.population import population_layers, set_stats_mode
from normlab.norms.registry import build_norm, get_norm_spec, norm_factory, norm_specs
from tests.helpers import free_port

pytestmark = pytest.mark.fast  # in-process: make test-fast

C = 4
# The methods whose formulas this file writes out (reference_train, reference_eval and
# population_of below); each is built with the small parameters its registration declares
# (test_params: valid at C=4 channels and batches of 8), as every method below is.
NAMES = ["bn", "ghost_bn", "batch_group", "bgn", "brn", "iebn", "syncbn"]
# Every registered batch-dependent method that works as a standalone layer (cbn needs the conv
# before it: tests/norms/test_cbn.py): the population-statistics contract tests run on each.
STANDALONE = [s.name for s in norm_specs() if s.batch_dependent and not s.layer.needs_conv]
NEW = [n for n in STANDALONE if n != "bn"]


def small(name: str) -> dict:
    """The parameters `name`'s registration declares for small test layers."""
    return get_norm_spec(name).test_params


def make(name: str, dtype: torch.dtype = torch.float64, **extra: object) -> nn.Module:
    params = {**small(name), **extra}
    layer = build_norm(name, C, **params).to(dtype)
    randomize(layer)
    return layer


def randomize(layer: nn.Module) -> None:
    """Non-trivial affine and gate parameters so formulas are exercised."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def data(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, C, 3, 3, generator=gen) * 1.5 + 0.7).to(dtype)


def affine(layer: nn.Module, xhat: Tensor, x: Tensor) -> Tensor:
    if hasattr(layer, "gate_weight"):  # iebn: gamma * gate scales x_hat
        gate = torch.sigmoid(layer.gate_weight * x.mean((2, 3), keepdim=True) + layer.gate_bias)
        return xhat * layer.weight.view(1, -1, 1, 1) * gate + layer.bias.view(1, -1, 1, 1)
    return xhat * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)


def norm_over(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def reference_train(name: str, layer: nn.Module, x: Tensor) -> Tensor:
    """Training-mode output computed independently (before the layer's own forward)."""
    eps = layer.eps
    if name in ("bn", "iebn", "syncbn"):
        xhat = norm_over(x, (0, 2, 3), eps)
    elif name == "ghost_bn":
        g = layer.ghost_batch_size
        xhat = torch.cat([norm_over(x[i : i + g], (0, 2, 3), eps) for i in range(0, len(x), g)])
    elif name == "batch_group":
        e, k = layer.examples_per_group, C // layer.groups
        xhat = torch.empty_like(x)
        for i in range(0, len(x), e):
            for j in range(0, C, k):
                block = x[i : i + e, j : j + k]
                xhat[i : i + e, j : j + k] = norm_over(block, (0, 1, 2, 3), eps)
    elif name == "bgn":
        k = C // layer.groups
        xhat = torch.cat(
            [norm_over(x[:, j : j + k], (0, 1, 2, 3), eps) for j in range(0, C, k)], dim=1
        )
    elif name == "brn":
        mean = x.mean((0, 2, 3))
        std = torch.sqrt(((x - mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3)) + eps)
        r = (std / layer.running_std).clamp(1 / layer.r_max, layer.r_max)
        d = ((mean - layer.running_mean) / layer.running_std).clamp(-layer.d_max, layer.d_max)
        xhat = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) * r.view(1, -1, 1, 1) + d.view(
            1, -1, 1, 1
        )
    else:
        raise AssertionError(name)
    return affine(layer, xhat, x)


def reference_eval(name: str, layer: nn.Module, x: Tensor) -> Tensor:
    """Evaluation output from the layer's running statistics, computed independently."""
    if name == "brn":
        xhat = (x - layer.running_mean.view(1, -1, 1, 1)) / layer.running_std.view(1, -1, 1, 1)
    elif name == "batch_group":
        k = C // layer.groups
        m1 = layer.running_m1.view(-1, k).mean(1).repeat_interleave(k)
        m2 = layer.running_m2.view(-1, k).mean(1).repeat_interleave(k)
        var = m2 - m1**2
        xhat = (x - m1.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + layer.eps)
    elif name == "bgn":
        k = C // layer.groups
        mean = layer.running_mean.repeat_interleave(k).view(1, -1, 1, 1)
        var = layer.running_var.repeat_interleave(k).view(1, -1, 1, 1)
        xhat = (x - mean) / torch.sqrt(var + layer.eps)
    else:
        mean = layer.running_mean.view(1, -1, 1, 1)
        xhat = (x - mean) / torch.sqrt(layer.running_var.view(1, -1, 1, 1) + layer.eps)
    return affine(layer, xhat, x)


def warm_up(layer: nn.Module, steps: int = 3) -> None:
    layer.train()
    for s in range(steps):
        layer(data(8, seed=100 + s, dtype=next(layer.parameters()).dtype))


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("name", NAMES)
def test_train_formula(name: str) -> None:
    layer = make(name)
    warm_up(layer)  # non-trivial running stats (matter for brn's r and d)
    x = data(8)
    expected = reference_train(name, layer, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_eval_formula_and_independence(name: str) -> None:
    layer = make(name)
    warm_up(layer)
    layer.eval()
    x = data(8)
    y = layer(x)
    torch.testing.assert_close(y, reference_eval(name, layer, x), rtol=1e-10, atol=1e-10)
    x2 = x.clone()
    x2[1:] = data(7, seed=5)
    torch.testing.assert_close(layer(x2)[0], y[0])


@pytest.mark.parametrize("name", STANDALONE)
def test_gradcheck(name: str) -> None:
    """Train-mode gradients; buffer-updating paths run in "batch" mode (same normalization).

    For brn, r and d are stop-gradient, so they are held at their clip limits (moving sigma tiny,
    moving mean far) where they are locally constant and finite differences agree.
    """
    layer = make(name)
    warm_up(layer)
    if name == "brn":
        with torch.no_grad():
            layer.running_std.fill_(0.01)
            layer.running_mean.fill_(-100.0)
    else:
        layer.stats_mode = "batch"
    buffers = {k: b.clone() for k, b in layer.named_buffers()}
    x = data(4, seed=3).requires_grad_(True)
    params = list(layer.parameters())

    def fn(inp: Tensor, *ps: Tensor) -> Tensor:
        with torch.no_grad():  # buffers as before every call (brn's r, d use them)
            for k, b in layer.named_buffers():
                b.copy_(buffers[k])
        return layer(inp)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", STANDALONE)
def test_batch_dependence(name: str) -> None:
    layer = make(name)
    x = data(8)
    y = layer(x)
    x2 = x.clone()
    x2[1] = x2[1] * 3 + 1  # same ghost / example group as sample 0
    assert not torch.allclose(layer(x2)[0], y[0])


@pytest.mark.parametrize("name", STANDALONE)
def test_running_stats_update_only_in_ema_training(name: str) -> None:
    layer = make(name)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    for mode in ("batch", "population", "record"):
        set_stats_mode(layer, mode)
        layer(data(8))
    layer.stats_mode = "ema"
    layer.eval()
    layer(data(8))
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    layer.train()
    layer(data(8))
    changed = [k for k, v in layer.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training in ema mode must update running statistics"


@pytest.mark.parametrize("name", STANDALONE)
def test_state_dict_round_trip(name: str) -> None:
    layer = make(name)
    warm_up(layer)
    fresh = build_norm(name, C, **small(name)).double()
    fresh.load_state_dict(layer.state_dict())
    x = data(8, seed=9)
    for train in (False, True):
        layer.train(train)
        fresh.train(train)
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- per method


def test_ghost_running_stats_match_sequential_bn() -> None:
    layer = make("ghost_bn", ghost_batch_size=2)
    bn = nn.BatchNorm2d(C, momentum=0.1).double()
    for s in range(2):
        x = data(8, seed=s)
        layer(x)
        for i in range(0, 8, 2):
            bn(x[i : i + 2])
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert int(layer.num_batches_tracked) == 8


def test_ghost_cumulative_momentum_none() -> None:
    layer = make("ghost_bn", ghost_batch_size=2, momentum=None)
    bn = nn.BatchNorm2d(C, momentum=None).double()
    for s in range(2):
        x = data(6, seed=s)
        layer(x)
        for i in range(0, 6, 2):
            bn(x[i : i + 2])
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)


def test_batch_group_running_moments_and_alpha() -> None:
    layer = make("batch_group")
    x = data(8)
    layer(x)
    torch.testing.assert_close(layer.running_m1, 0.99 * 0 + 0.01 * x.mean((0, 2, 3)))
    torch.testing.assert_close(layer.running_m2, 0.99 * 1 + 0.01 * (x**2).mean((0, 2, 3)))
    layer.eval_alpha = 0.5
    layer.eval()
    k = 2
    m1 = layer.running_m1.view(-1, k).mean(1)
    m2 = layer.running_m2.view(-1, k).mean(1)
    a = x.view(8, 2, k, 3, 3).mean((2, 3, 4))
    b = (x**2).view(8, 2, k, 3, 3).mean((2, 3, 4))
    mu = 0.5 * a + 0.5 * m1
    s = 0.5 * b + 0.5 * m2
    inv = 1 / torch.sqrt(s - mu**2 + layer.eps)
    xhat = (x - mu.repeat_interleave(k, 1)[..., None, None]) * inv.repeat_interleave(k, 1)[
        ..., None, None
    ]
    torch.testing.assert_close(layer(x), affine(layer, xhat, x))


def test_bgn_with_groups_equal_channels_is_bn() -> None:
    bgn = build_norm("bgn", C, groups=C).double()
    bn = build_norm("bn", C).double()
    randomize(bgn)
    randomize(bn)
    for s in range(3):
        x = data(8, seed=s)
        torch.testing.assert_close(bgn(x), bn(x))
    torch.testing.assert_close(bgn.running_mean, bn.running_mean)
    torch.testing.assert_close(bgn.running_var, bn.running_var)
    bgn.eval()
    bn.eval()
    torch.testing.assert_close(bgn(data(8)), bn(data(8)))


def test_brn_without_warmup_clips_from_the_first_step() -> None:
    """warmup_steps=0 with ramps ending at 0: the full limits apply at step 0 (they used to
    start one step late)."""
    layer = build_norm("brn", C, warmup_steps=0, r_max_steps=0, d_max_steps=0, r_max=2.0)
    r_max, d_max = layer.current_limits()
    assert (float(r_max), float(d_max)) == (2.0, 5.0)
    later = build_norm("brn", C, warmup_steps=3, r_max_steps=3, d_max_steps=3, r_max=2.0)
    later.num_steps.fill_(2)
    assert [float(v) for v in later.current_limits()] == [1.0, 0.0]
    later.num_steps.fill_(3)
    assert [float(v) for v in later.current_limits()] == [2.0, 5.0]


def test_brn_schedule_and_warmup_is_bn() -> None:
    layer = build_norm("brn", C, warmup_steps=10, r_max_steps=20, d_max_steps=15).double()
    assert [float(v) for v in layer.current_limits()] == [1.0, 0.0]
    layer.num_steps.fill_(15)
    assert [float(v) for v in layer.current_limits()] == pytest.approx([2.0, 5.0])
    layer.num_steps.fill_(100)
    assert [float(v) for v in layer.current_limits()] == pytest.approx([3.0, 5.0])
    layer.num_steps.fill_(0)
    bn = build_norm("bn", C).double()
    x = data(8)
    torch.testing.assert_close(layer(x), bn(x))
    assert int(layer.num_steps) == 1
    std = torch.sqrt(x.var((0, 2, 3), unbiased=False) + layer.eps)
    torch.testing.assert_close(layer.running_std, 0.99 + 0.01 * std)


def test_brn_r_d_stop_gradient() -> None:
    """With r, d non-trivial, the input gradient is BN's gradient scaled by r (not through r, d)."""
    layer = make("brn")
    warm_up(layer)
    state = copy.deepcopy(layer.state_dict())
    x = data(8).requires_grad_(True)
    g = torch.randn_like(x)
    (layer(x) * g).sum().backward()
    layer.load_state_dict(state)
    mean = x.detach().mean((0, 2, 3))
    std = torch.sqrt(x.detach().var((0, 2, 3), unbiased=False) + layer.eps)
    r = (std / layer.running_std).clamp(1 / layer.r_max, layer.r_max)
    xx = x.detach().clone().requires_grad_(True)
    bn_out = norm_over(xx, (0, 2, 3), layer.eps) * (r * layer.weight.detach()).view(1, -1, 1, 1)
    (bn_out * g).sum().backward()
    torch.testing.assert_close(x.grad, xx.grad)
    assert not torch.allclose(r, torch.ones_like(r))
    del mean


def test_iebn_initial_gate() -> None:
    layer = build_norm("iebn", C)
    assert torch.all(layer.gate_weight == 0) and torch.all(layer.gate_bias == -1)
    x = data(8, dtype=torch.float32)
    bn = nn.BatchNorm2d(C, affine=False)
    torch.testing.assert_close(layer(x), bn(x) * torch.sigmoid(torch.tensor(-1.0)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("ghost_bn", {"ghost_batch_size": 0}, "ghost_batch_size"),
        ("batch_group", {"groups": 3}, "valid groups: 1, 2, 4"),
        ("batch_group", {"groups": 2, "examples_per_group": 0}, "examples_per_group"),
        ("batch_group", {"groups": 2, "alpha": 1.5}, "alpha"),
        ("batch_group", {"groups": 2, "momentum": 0.0}, "momentum"),
        ("bgn", {"groups": 8}, "valid groups: 1, 2, 4"),
        ("brn", {"r_max": 0.5}, "r_max"),
        ("brn", {"d_max": -1.0}, "d_max"),
        ("brn", {"warmup_steps": 100, "r_max_steps": 50}, "r_max_steps"),
        ("iebn", {"eps": 0.0}, "eps"),
        ("syncbn", {"momentum": 2.0}, "momentum"),
        ("bn", {"groups": 2}, "valid parameters"),
    ],
)
def test_bad_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_norm(name, C, **params)


def test_bad_stats_mode() -> None:
    layer = make("bn")
    with pytest.raises(ValueError, match="valid modes: ema, record, batch, population"):
        layer.stats_mode = "frozen"
    with pytest.raises(ValueError, match="nothing recorded"):
        layer.finish_recording()


def test_check_batch_size() -> None:
    with pytest.raises(ValueError, match="does not divide the per-device batch 12"):
        build_norm("ghost_bn", C, ghost_batch_size=8).check_batch_size(12)
    build_norm("ghost_bn", C, ghost_batch_size=8).check_batch_size(16)
    with pytest.raises(ValueError, match="does not divide the per-device batch 5"):
        build_norm("batch_group", C, groups=2, examples_per_group=2).check_batch_size(5)
    for name in STANDALONE:
        with pytest.raises(ValueError, match="per-device batch of 1"):
            build_norm(name, C, **small(name)).check_batch_size(1)
    with pytest.raises(ValueError, match="ghost_batch_size=2 does not divide"):
        make("ghost_bn")(data(5))
    # examples_per_group=1 is GN with running statistics: batch-independent.
    build_norm("batch_group", C, groups=2, examples_per_group=1).check_batch_size(1)


# --------------------------------------------------------------------------- interface


def population_of(name: str, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The whole set's mean and biased variance per statistic of `name`."""
    if name in ("bgn", "batch_group"):
        xg = x.reshape(len(x), layer.groups, -1).transpose(0, 1).reshape(layer.groups, -1)
        return xg.mean(1), xg.var(1, unbiased=False)
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)


def layer_population(name: str, layer: nn.Module) -> tuple[Tensor, Tensor]:
    if name == "batch_group":
        k = C // layer.groups
        m1 = layer.running_m1.view(-1, k)[:, 0]
        return m1, layer.running_m2.view(-1, k)[:, 0] - m1**2
    if name == "brn":
        return layer.running_mean, layer.running_std**2 - layer.eps
    return layer.running_mean, layer.running_var


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [2, 32])
def test_recording_reproduces_population(name: str, batch: int) -> None:
    layer = build_norm(name, C, **small(name))  # float32, as in use
    x = data(128, seed=4, dtype=torch.float32) * 2 + 0.5
    layer.eval()  # record works in eval mode too
    layer.start_recording()
    for i in range(0, len(x), batch):
        layer(x[i : i + batch])
    moments = layer.recorded_moments()
    layer.load_recorded_moments(moments)  # e.g. after an all_reduce
    layer.finish_recording()
    assert layer.stats_mode == "ema"
    mean, var = population_of(name, layer, x.double())
    got_mean, got_var = layer_population(name, layer)
    torch.testing.assert_close(got_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_var.double(), var, rtol=1e-6, atol=1e-6)


def test_total_variance_estimator_vs_mean_of_batch_variances() -> None:
    """Image mean ~ N(0,1), pixel noise 0.5, 64 px; true var 1.25 (docs/methods.md, "PreciseBN")."""
    gen = torch.Generator().manual_seed(0)
    images = 8192
    x = torch.randn(images, 1, 1, 1, generator=gen) + 0.5 * torch.randn(
        images, 1, 8, 8, generator=gen
    )
    cumulative = build_norm("bn", 1, momentum=None)  # mean of Bessel-corrected batch variances
    precise = build_norm("bn", 1)
    precise.start_recording()
    with torch.no_grad():
        for i in range(0, images, 2):
            cumulative(x[i : i + 2])
            precise(x[i : i + 2])
    precise.finish_recording()
    assert float(cumulative.running_var) == pytest.approx(0.75, abs=0.05)
    assert float(precise.running_var) == pytest.approx(1.25, abs=0.06)
    torch.testing.assert_close(precise.running_var.double(), x.double().var(unbiased=False).view(1))


@pytest.mark.parametrize("name", STANDALONE)
def test_population_mode_in_training_uses_running_stats(name: str) -> None:
    layer = make(name)
    warm_up(layer)
    layer.eval()
    x = data(8)
    expected = layer(x)
    layer.train()
    layer.stats_mode = "population"
    before = copy.deepcopy(layer.state_dict())
    y = layer(x)
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", STANDALONE)
def test_batch_mode_in_eval_equals_train_normalization(name: str) -> None:
    layer = make(name, **({"r_max": 1.0, "d_max": 0.0} if name == "brn" else {}))
    x = data(8)
    expected = copy.deepcopy(layer).train()(x)
    layer.eval()
    layer.stats_mode = "batch"
    torch.testing.assert_close(layer(x), expected)


def test_helpers_find_and_set_layers() -> None:
    model = build_model({"name": "resnet20"}, norm_factory("bgn"), 10)
    layers = population_layers(model)
    assert len(layers) == 19
    assert set_stats_mode(model, "population") == 19
    assert all(layer.stats_mode == "population" for layer in layers)
    with pytest.raises(ValueError, match="valid modes"):
        set_stats_mode(model, "bad")


@pytest.mark.parametrize("name", NEW)
def test_resnet20_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, norm_factory(name), 10)
    out = model(torch.randn(16, 3, 32, 32))
    assert out.shape == (16, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- syncbn


def _sync_worker(
    rank: int, world: int, init: str, sizes: list[int], out_dir: str, dtype: torch.dtype
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        layer = make("syncbn").to(dtype)
        x_all = data(sum(sizes), seed=7).to(dtype)
        g_all = data(sum(sizes), seed=8).to(dtype)
        start = sum(sizes[:rank])
        x = x_all[start : start + sizes[rank]].clone().requires_grad_(True)
        y = layer(x)
        (y * g_all[start : start + sizes[rank]]).sum().backward()
        torch.save(
            {
                "y": y.detach(),
                "gx": x.grad,
                "gw": layer.weight.grad,
                "gb": layer.bias.grad,
                "rm": layer.running_mean,
                "rv": layer.running_var,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("sizes", "dtype"),
    [([4, 4], torch.float32), ([3, 5], torch.float32), ([3, 5], torch.float64)],
)
def test_syncbn_two_processes_equals_bn_on_concatenation(
    sizes: list[int], dtype: torch.dtype
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init = f"tcp://127.0.0.1:{free_port()}"
        mp.spawn(_sync_worker, args=(2, init, sizes, tmp, dtype), nprocs=2, join=True)
        parts = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    bn = make("bn").to(dtype)
    x = data(sum(sizes), seed=7).to(dtype).requires_grad_(True)
    y = bn(x)
    (y * data(sum(sizes), seed=8).to(dtype)).sum().backward()
    # float64 gradients stay float64-accurate (the backward once cast its sums to float32)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([p["gx"] for p in parts]), x.grad, **tol)
    torch.testing.assert_close(parts[0]["gw"] + parts[1]["gw"], bn.weight.grad, **tol)
    torch.testing.assert_close(parts[0]["gb"] + parts[1]["gb"], bn.bias.grad, **tol)
    for p in parts:
        torch.testing.assert_close(p["rm"], bn.running_mean, **tol)
        torch.testing.assert_close(p["rv"], bn.running_var, **tol)


def test_syncbn_without_process_group_is_bn() -> None:
    sync, bn = make("syncbn"), make("bn")
    x = data(8)
    torch.testing.assert_close(sync(x), bn(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.running_var, bn.running_var, rtol=0, atol=0)
