"""Cross-Iteration BN: equals BN without history, compensation, window advance per optimizer
step, checkpoint state, binding to the preceding convolution."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.models import build_model
from normlab.models.binding import bind_norms_to_convs
from normlab.norms import build_norm, norm_factory
from tests.helpers import sgd_steps

pytestmark = pytest.mark.fast  # in-process: make test-fast


def conv_cbn(
    window: int = 3, burnin: int = 0, rho: float = 1.0, dtype: torch.dtype = torch.float32
) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        build_norm("cbn", 3, window=window, burnin_steps=burnin, rho=rho),
    ).to(dtype)
    bind_norms_to_convs(model, torch.zeros(2, 2, 5, 5, dtype=dtype))
    return model


def step(model: nn.Sequential, x: torch.Tensor, lr: float = 0.1) -> torch.Tensor:
    out = model(x)
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * direction).sum().backward()  # a loss that moves the conv weights despite normalization
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
            p.grad = None
    model[1].on_optimizer_step()
    return out.detach()


def test_without_history_cbn_equals_bn_outputs_and_gradients() -> None:
    model = conv_cbn(window=4)
    reference = nn.Sequential(copy.deepcopy(model[0]), nn.BatchNorm2d(3))
    x = torch.randn(4, 2, 5, 5, requires_grad=True)
    out = model(x)
    expected = reference(x)
    torch.testing.assert_close(out, expected)
    grad_cbn = torch.autograd.grad(out.pow(3).sum(), (x, model[0].weight))
    grad_bn = torch.autograd.grad(expected.pow(3).sum(), (x, reference[0].weight))
    for a, b in zip(grad_cbn, grad_bn, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)


def test_rho_zero_is_naive_averaging_of_the_stored_statistics() -> None:
    model = conv_cbn(window=3, rho=0.0)
    batches = [torch.randn(4, 2, 5, 5) + i for i in range(3)]
    stats = []
    for batch in batches[:2]:
        with torch.no_grad():
            y = model[0](batch)
        stats.append((y.mean((0, 2, 3)), y.pow(2).mean((0, 2, 3))))
        step(model, batch)
    x = batches[2]
    with torch.no_grad():
        y = model[0](x)
        mean = (y.mean((0, 2, 3)) + stats[0][0] + stats[1][0]) / 3
        sq = (
            y.pow(2).mean((0, 2, 3))
            + torch.maximum(stats[0][1], stats[0][0] ** 2)
            + torch.maximum(stats[1][1], stats[1][0] ** 2)
        ) / 3
        expected = (y - mean.view(1, -1, 1, 1)) / torch.sqrt(sq - mean**2 + 1e-5).view(1, -1, 1, 1)
        expected = expected * model[1].weight.view(1, -1, 1, 1) + model[1].bias.view(1, -1, 1, 1)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_compensation_derivatives_match_autograd() -> None:
    model = conv_cbn(window=2, dtype=torch.float64)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    model(x)
    _, _, dmean, dsq, _ = model[1]._pending
    weight = model[0].weight

    def stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.conv2d(x, w, padding=1)
        return y.mean((0, 2, 3)), y.pow(2).mean((0, 2, 3))

    jac_mean, jac_sq = torch.autograd.functional.jacobian(stats, weight.detach())
    for c in range(3):
        torch.testing.assert_close(dmean[c], jac_mean[c, c].flatten())
        torch.testing.assert_close(dsq[c], jac_sq[c, c].flatten())


def test_compensated_statistics_track_the_current_weights() -> None:
    # With the same batch every step, compensated past statistics approximate the statistics of
    # that batch under the current weights better than the uncompensated ones.
    x = torch.randn(8, 2, 5, 5)
    compensated, naive = conv_cbn(window=2, rho=1.0), conv_cbn(window=2, rho=0.0)
    for model in (compensated, naive):
        step(model, x, lr=0.5)
    errors = []
    for model in (compensated, naive):
        with torch.no_grad():
            y = model[0](x)
            current = y.mean((0, 2, 3))
            delta = model[0].weight.flatten(1) - model[1].past_weight[0]
            past = model[1].past_mean[0] + model[1].rho * (model[1].past_dmean[0] * delta).sum(-1)
        errors.append((past - current).abs().max().item())
    assert errors[0] < 1e-5 < errors[1], (
        "first-order compensation is exact for the mean of a linear conv"
    )


def test_gradcheck_float64() -> None:
    model = conv_cbn(window=2, dtype=torch.float64)
    step(model, torch.randn(3, 2, 4, 4, dtype=torch.float64))
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: model(inp), (x,))


def test_window_advances_per_optimizer_step_not_per_forward() -> None:
    model = conv_cbn(window=3)
    x = torch.randn(4, 2, 5, 5)
    model(x)
    model(x)
    assert int(model[1].filled) == 0 and int(model[1].num_steps) == 0
    step(model, x)
    assert int(model[1].filled) == 1 and int(model[1].num_steps) == 1
    for _ in range(3):
        step(model, x)
    assert int(model[1].filled) == 2 and int(model[1].num_steps) == 4


def test_burn_in_is_plain_batch_norm() -> None:
    model = conv_cbn(window=3, burnin=5)
    for _ in range(2):
        step(model, torch.randn(4, 2, 5, 5))
    x = torch.randn(4, 2, 5, 5)
    with torch.no_grad():
        expected = F.batch_norm(
            model[0](x), None, None, model[1].weight, model[1].bias, True, 0.0, 1e-5
        )
        torch.testing.assert_close(model(x), expected)


def test_state_survives_a_checkpoint_round_trip() -> None:
    model = conv_cbn(window=3)
    for i in range(3):
        step(model, torch.randn(4, 2, 5, 5) + i)
    restored = conv_cbn(window=3)
    restored.load_state_dict(model.state_dict())
    x = torch.randn(4, 2, 5, 5)
    torch.testing.assert_close(restored(x), model(x))
    assert int(restored[1].num_steps) == 3 and int(restored[1].filled) == 2


def test_unbound_cbn_refuses_to_train() -> None:
    layer = build_norm("cbn", 3)
    with pytest.raises(ValueError, match="no convolution bound"):
        layer(torch.randn(4, 3, 5, 5))
    layer.eval()(torch.randn(4, 3, 5, 5))  # evaluation needs no conv


def test_binding_in_models() -> None:
    for cfg in ({"name": "resnet20"}, {"name": "resnet18"}, {"source": "timm", "name": "resnet18"}):
        model = build_model(cfg, norm_factory("cbn", window=2), 10)
        layers = [m for m in model.modules() if getattr(m, "needs_conv", False)]
        assert layers and all(m.conv is not None for m in layers), cfg
        assert all(
            "conv" not in name.split(".")[-1] or not name.endswith("_conv")
            for name, _ in model.named_modules()
        )
    with pytest.raises(ValueError, match="none precedes"):
        build_model({"name": "resnet20", "preact": True}, norm_factory("cbn", no_conv="error"), 10)
    with pytest.warns(UserWarning, match="without compensation"):
        preact = build_model(
            {"name": "resnet20", "preact": True}, norm_factory("cbn", window=2), 10
        )
    naive = [m for m in preact.modules() if getattr(m, "uncompensated", False)]
    bound = [m for m in preact.modules() if getattr(m, "needs_conv", False) and m.conv is not None]
    assert (
        naive and bound
    )  # norm1 of blocks after the first sees a residual sum; norm2 follows conv1


def test_cbn_resnet_loss_falls() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, norm_factory("cbn", window=2, burnin_steps=2), 10)
    params_before = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    losses = sgd_steps(model, x, y, steps=10, lr=0.05, momentum=0.9)
    assert losses[-1] < 0.5 * losses[0]
    assert sum(p.numel() for p in model.parameters()) == params_before


def test_preactivation_cbn_trains_with_naive_layers() -> None:
    """Pre-activation blocks: the uncompensated (naive) layers step their window of statistics
    alone; this raised a zip() length error at the first optimizer step."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="without compensation"):
        model = build_model(
            {"name": "resnet20", "preact": True},
            norm_factory("cbn", window=3, burnin_steps=0),
            10,
        )
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    losses = sgd_steps(model, x, y, steps=3, lr=0.01)
    assert all(torch.isfinite(torch.tensor(losses)))
    naive = [m for m in model.modules() if getattr(m, "uncompensated", False)]
    assert naive and all(int(m.filled) == 2 and m.past_mean.abs().sum() > 0 for m in naive)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        build_norm("cbn", 4, window=0)
    with pytest.raises(ValueError, match="rho must be in"):
        build_norm("cbn", 4, rho=2.0)
