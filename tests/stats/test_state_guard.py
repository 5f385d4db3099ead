"""state_guard: what evaluation and inspection change on a model comes back afterwards (also
when they fail), exactly the parts asked for, in place; the rest is left as the block left it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms import build_norm, set_virtual_batch_size
from normlab.norms.population import population_layers, state_guard
from normlab.norms.virtual import virtual_batch_size_of

pytestmark = pytest.mark.fast  # in-process: make test-fast


class Boom(RuntimeError):
    """Raised inside a guarded block."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        build_norm("bn", 8, activation="relu"),
        nn.Conv2d(8, 8, 3, padding=1),
        build_norm("bgn", 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _batch() -> Tensor:
    return torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1


def _population(model: nn.Module) -> list[Tensor]:
    return [t.clone() for layer in population_layers(model) for t in layer.population_tensors()]


def _assert_same(got: list[Tensor], expected: list[Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _differs(got: list[Tensor], expected: list[Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def _disturb(model: nn.Module) -> None:
    """What an evaluation does on the way: eval mode off, batch statistics, buffers updated."""
    model.train()
    for layer in population_layers(model):
        layer.stats_mode = "batch"
    with torch.no_grad():
        for layer in population_layers(model):
            layer.stats_mode = "ema"
        model(_batch())  # a train-mode forward updates the running statistics
        for layer in population_layers(model):
            layer.stats_mode = "batch"


def test_mode_stats_modes_and_population_come_back_after_the_block() -> None:
    model = _model().eval()
    population_layers(model)[1].stats_mode = "population"
    before = _population(model)
    with state_guard(model, mode=True, stats_modes=True, population=True):
        _disturb(model)
        assert model.training and _differs(_population(model), before)
    assert not model.training
    assert not any(m.training for m in model.modules())
    assert [layer.stats_mode for layer in population_layers(model)] == ["ema", "population"]
    _assert_same(_population(model), before)


def test_everything_comes_back_when_the_block_raises() -> None:
    model = _model().eval()
    before = _population(model)
    with (
        pytest.raises(Boom),
        state_guard(model, mode=True, stats_modes=True, population=True),
    ):
        _disturb(model)
        raise Boom
    assert not model.training
    assert [layer.stats_mode for layer in population_layers(model)] == ["ema", "ema"]
    _assert_same(_population(model), before)


def test_buffers_are_restored_in_place() -> None:
    """Restoring copies into the model's own tensors (optimizers, DDP and hooks hold them)."""
    model = _model()
    identities = [id(t) for layer in population_layers(model) for t in layer.population_tensors()]
    with state_guard(model, population=True):
        _disturb(model)
    assert [id(t) for layer in population_layers(model) for t in layer.population_tensors()] == (
        identities
    )


def test_parts_not_asked_for_are_left_as_the_block_left_them() -> None:
    model = _model().eval()
    before = _population(model)
    with state_guard(model, mode=True):
        _disturb(model)
        after = _population(model)
    assert not model.training  # asked for
    assert [layer.stats_mode for layer in population_layers(model)] == ["batch", "batch"]
    _assert_same(_population(model), after)
    assert _differs(after, before)

    model = _model().eval()
    with state_guard(model, population=True):
        _disturb(model)
    assert model.training  # not asked for
    assert [layer.stats_mode for layer in population_layers(model)] == ["batch", "batch"]


def test_restore_inside_the_block_resets_to_the_saved_state() -> None:
    model = _model()
    before = _population(model)
    with state_guard(model, population=True) as saved:
        for _ in range(2):
            _disturb(model)
            assert _differs(_population(model), before)
            saved.restore()
            _assert_same(_population(model), before)


def test_state_dict_brings_back_parameters_counters_and_every_buffer() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with state_guard(model, state_dict=True):
        _disturb(model)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.endswith("num_batches_tracked") for k in changed)
        assert any(k.endswith("weight") for k in changed)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_gradients_come_back_including_none() -> None:
    model = _model()
    F.cross_entropy(model(_batch()), torch.arange(8) % 3).backward()
    model[-1].bias.grad = None
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    with pytest.raises(Boom), state_guard(model, grads=True):
        model.zero_grad(set_to_none=True)
        (model(_batch()).sum() * 3).backward()
        raise Boom
    for name, param in model.named_parameters():
        if grads[name] is None:
            assert param.grad is None, name
        else:
            torch.testing.assert_close(param.grad, grads[name], rtol=0, atol=0)


def test_virtual_batch_size_comes_back() -> None:
    model = _model()
    set_virtual_batch_size(model, 4)
    with pytest.raises(Boom), state_guard(model, virtual_batch_size=True):
        set_virtual_batch_size(model, 2)
        assert virtual_batch_size_of(model) == 2
        raise Boom
    assert virtual_batch_size_of(model) == 4
    with state_guard(model, virtual_batch_size=True):
        set_virtual_batch_size(model, None)
    assert virtual_batch_size_of(model) == 4
