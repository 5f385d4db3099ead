"""PreciseBN under virtual devices: loader batches of k x b cut into chunks of b give the same
population statistics as batches of b, and training chunks come back afterwards."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from normlab.norms import build_norm, set_virtual_batch_size
from normlab.norms.virtual import virtual_batch_size_of
from normlab.stats.callbacks import PreciseBNCallback

pytestmark = pytest.mark.fast  # in-process: make test-fast


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    params = {"ghost_batch_size": 2} if name == "ghost_bn" else {}
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        build_norm(name, 8, activation="relu", **params),
        nn.Conv2d(8, 8, 3, padding=1),
        build_norm(name, 8, **params),
    ).double()


def _recompute(callback: PreciseBNCallback, model: nn.Module, data: TensorDataset) -> None:
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_set=data, collate=None), current_epoch=0
    )
    callback.recompute(trainer, SimpleNamespace(model=model))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["bn", "ghost_bn", "bgn"])
@pytest.mark.parametrize("num_samples", [40, 41, 42])
def test_virtual_precise_bn_equals_batches_of_b(name: str, num_samples: int) -> None:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(60, 3, 6, 6, dtype=torch.float64, generator=generator) * 2 + 1,
        torch.zeros(60, dtype=torch.long),
    )
    plain = _model(name)
    virtual = copy.deepcopy(plain)
    set_virtual_batch_size(virtual, 6)  # the training chunk, different from the estimation one
    _recompute(PreciseBNCallback(num_samples, 4, seed=3), plain, data)
    _recompute(PreciseBNCallback(num_samples, 4, seed=3, virtual_devices=3), virtual, data)
    assert virtual_batch_size_of(virtual) == 6
    for (key, a), b in zip(plain.named_buffers(), virtual.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=key)


def test_precise_bn_leaves_frozen_statistics_alone() -> None:
    """Once FrozenBN froze the statistics the model trains with them as constants: PreciseBN
    before a validation must not re-estimate them (it did, and accuracy fell 29% -> 8.5%)."""
    from normlab.norms.population import set_stats_mode

    data = TensorDataset(torch.randn(40, 3, 6, 6, dtype=torch.float64), torch.zeros(40).long())
    model = _model("bn")
    callback = PreciseBNCallback(20, 4)
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_set=data, collate=None),
        current_epoch=0,
        sanity_checking=False,
    )
    module = SimpleNamespace(model=model)
    set_stats_mode(model, "population")
    before = [b.clone() for b in model.buffers()]
    callback.on_validation_start(trainer, module)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    set_stats_mode(model, "ema")
    callback.on_validation_start(trainer, module)  # type: ignore[arg-type]
    assert not all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
