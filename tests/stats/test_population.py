"""PreciseBN, FrozenBN, batch-statistics and example-weighed inference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.norms import build_norm
from normlab.norms.registry import eval_alpha_norms
from normlab.stats import update_population_stats
from normlab.stats.callbacks import EvalStatsCallback, FrozenBNCallback, set_eval_alpha

pytestmark = pytest.mark.fast  # in-process: make test-fast


def conv_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build_norm("bn", 4, momentum=0.1))


def data(n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 6, 6, generator=g) * 2 + torch.randn(n, 3, 1, 1, generator=g)


@pytest.mark.parametrize("batch_size", [2, 32])
def test_precise_bn_equals_the_exact_population_statistics(batch_size: int) -> None:
    model = conv_bn_model()
    x = data()
    with torch.no_grad():
        features = model[0](x)
    exact_mean = features.mean(dim=(0, 2, 3))
    exact_var = features.var(dim=(0, 2, 3), unbiased=False)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=batch_size, shuffle=True)
    assert update_population_stats(model, loader, num_samples=len(x)) == 1
    torch.testing.assert_close(model[1].running_mean, exact_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, exact_var, rtol=1e-4, atol=1e-6)


def test_total_variance_estimator_where_averaging_batch_variances_fails() -> None:
    # docs/methods.md, "PreciseBN": image means ~ N(0, 1), pixel noise 0.5, 64 pixels: true
    # variance 1.25.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 1, 1, generator=g) + 0.5 * torch.randn(4096, 1, 8, 8, generator=g)
    model = nn.Sequential(build_norm("bn", 1))
    update_population_stats(model, DataLoader(TensorDataset(x), batch_size=2), num_samples=len(x))
    mean_of_batch_vars = torch.stack([b.var(unbiased=True) for b in x.split(2)]).mean()
    assert abs(model[0].running_var.item() - 1.25) < 0.06
    assert abs(mean_of_batch_vars.item() - 0.75) < 0.06


def test_precise_bn_leaves_weights_and_mode_alone() -> None:
    model = conv_bn_model().train()
    weights = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if "running" not in k and "num_batches" not in k
    }
    update_population_stats(
        model, DataLoader(TensorDataset(data(64)), batch_size=8), num_samples=64
    )
    assert model.training and model[1].stats_mode == "ema"
    for key, value in weights.items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_precise_bn_refuses_a_short_loader() -> None:
    with pytest.raises(ValueError, match="asked for 1000 samples but the loader yielded only 64"):
        update_population_stats(
            conv_bn_model(), DataLoader(TensorDataset(data(64)), batch_size=8), 1000
        )


def test_precise_bn_ignores_models_without_batch_dependent_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), build_norm("gn", 4, groups=2))
    assert update_population_stats(model, [data(8)], 8) == 0


def test_frozen_bn_switches_for_the_last_epochs_only() -> None:
    model = nn.Sequential(build_norm("bn", 4))
    callback = FrozenBNCallback(last_epochs=2, freeze_affine=True)
    module = SimpleNamespace(model=model)
    modes = []
    for epoch in range(5):
        callback.on_train_epoch_start(SimpleNamespace(current_epoch=epoch, max_epochs=5), module)  # type: ignore[arg-type]
        modes.append(model[0].stats_mode)
    assert modes == ["ema", "ema", "ema", "population", "population"]
    assert callback.frozen_at_epoch == 3
    assert not model[0].weight.requires_grad
    before = model[0].running_mean.clone()
    model.train()(torch.randn(8, 4, 3, 3) + 5)
    torch.testing.assert_close(
        model[0].running_mean, before
    )  # frozen statistics are used, not updated


def test_eval_stats_batch_normalizes_with_each_batch_during_validation() -> None:
    model = nn.Sequential(build_norm("bn", 4))
    model.train()(torch.randn(16, 4, 3, 3))  # some running statistics
    x = torch.randn(8, 4, 3, 3) * 3 + 1
    model.eval()
    population = model(x)
    callback = EvalStatsCallback("batch")
    module = SimpleNamespace(model=model)
    callback.on_validation_epoch_start(None, module)  # type: ignore[arg-type]
    batch = model(x)
    callback.on_validation_epoch_end(None, module)  # type: ignore[arg-type]
    expected = F.batch_norm(x, None, None, model[0].weight, model[0].bias, True, 0.0, 1e-5)
    torch.testing.assert_close(batch, expected)
    assert not torch.allclose(batch, population)
    torch.testing.assert_close(model(x), population)  # back to population statistics


def test_example_weighed_inference_interpolates_population_and_instance_stats() -> None:
    layer = build_norm("bn", 4)
    layer.train()(torch.randn(32, 4, 5, 5) * 2 + 1)
    layer.eval()
    x = torch.randn(6, 4, 5, 5)
    plain = layer(x)
    set_eval_alpha(layer, 1.0)
    own = layer(x)
    expected = F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=1e-5)
    torch.testing.assert_close(own, expected, rtol=1e-4, atol=1e-4)
    set_eval_alpha(layer, 0.0)
    torch.testing.assert_close(layer(x), plain)


def test_eval_alpha_is_refused_where_not_implemented() -> None:
    *others, last = eval_alpha_norms()  # batch_group, bn, ghost_bn and syncbn
    with pytest.raises(ValueError, match=f"available for norm={', '.join(others)} and {last}$"):
        set_eval_alpha(build_norm("iebn", 4), 0.5)


@pytest.mark.parametrize("name", ["bn", "ghost_bn", "batch_group", "bgn", "brn", "iebn", "syncbn"])
def test_momentum_null_is_a_cumulative_average_on_every_batch_dependent_layer(name: str) -> None:
    params = {"ghost_batch_size": 4} if name == "ghost_bn" else {}
    if name == "batch_group":
        params = {"groups": 4, "examples_per_group": 4}
    if name == "bgn":
        params = {"groups": 4}  # one channel a group: statistics per channel
    layer = build_norm(name, 4, momentum=None, **params).train()
    batches = [torch.randn(4, 4, 3, 3) + 3 * i for i in range(3)]
    for batch in batches:
        layer(batch)
    running = getattr(layer, "running_mean", None)
    running = running if running is not None else layer.running_m1
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(running, expected, rtol=1e-5, atol=1e-5)
