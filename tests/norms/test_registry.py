"""Contracts every registered method meets, run for each registration automatically (a new
method needs no edit here): its registration agrees with its layer class, it trains and
evaluates at its declared test parameters, its batch dependence is as declared, its state
round-trips, and a batch-dependent layer declares its population statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from normlab.models.binding import bind_norms_to_convs
from normlab.norms import available_norms, build_norm, get_norm_spec, register_norm
from normlab.norms.base import NormLayer
from normlab.norms.population import PopulationStats
from normlab.norms.registry import eval_alpha_norms
from normlab.stats.callbacks import set_eval_alpha

pytestmark = pytest.mark.fast  # in-process: make test-fast

C = 4  # channels of every test layer: the registrations' test_params make methods work here
NAMES = available_norms()
BATCH_DEPENDENT = [name for name in NAMES if get_norm_spec(name).batch_dependent]


def conv_norm(name: str, activation: str | None = "relu") -> nn.Sequential:
    """A conv and the `name` layer built with its test_params, bound as a model would be."""
    torch.manual_seed(0)
    norm = build_norm(name, C, activation, **get_norm_spec(name).test_params)
    model = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), norm)
    bind_norms_to_convs(model, torch.zeros(2, 3, 5, 5))
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model


def data(n: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.7


@pytest.mark.parametrize("name", NAMES)
def test_registration_is_what_the_layer_class_declares(name: str) -> None:
    spec = get_norm_spec(name)
    layer = build_norm(name, C, **spec.test_params)
    assert isinstance(layer, spec.layer) and issubclass(spec.layer, NormLayer)
    assert spec.batch_dependent == spec.layer.batch_dependent == layer.batch_dependent
    assert spec.fuses_activation == spec.layer.fuses_activation
    assert spec.summary and spec.builder.__doc__, "the README row and the conf comment"
    assert set(spec.test_params) <= set(spec.defaults)
    if spec.batch_dependent:  # evaluation needs population statistics
        assert issubclass(spec.layer, PopulationStats)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("name", NAMES)
def test_trains_and_evaluates_at_its_test_params(name: str, activation: str | None) -> None:
    model = conv_norm(name, activation)
    model[1].check_batch_size(2)
    model.train()
    out = model(data())
    assert out.shape == (4, C, 5, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model[1].parameters() if p.requires_grad)
    model.eval()
    assert torch.isfinite(model(data(seed=1))).all()


@pytest.mark.parametrize("name", NAMES)
def test_batch_dependence_is_as_declared(name: str) -> None:
    model = conv_norm(name).train()
    for step in range(2):
        model(data(seed=10 + step))
    x = data()
    other = x.clone()
    other[1] = other[1] * 3 + 1  # sample 1 shares sample 0's ghost batch / example group
    y, y_other = copy.deepcopy(model)(x)[0], copy.deepcopy(model)(other)[0]
    if get_norm_spec(name).batch_dependent:
        assert not torch.allclose(y, y_other), f"{name} is declared batch-dependent"
    else:
        torch.testing.assert_close(y, y_other, msg=f"{name} is declared batch-independent")
    model.eval()  # evaluation is per sample for every method
    torch.testing.assert_close(model(x)[0], model(other)[0])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    model = conv_norm(name).train()
    for step in range(3):
        model(data(seed=20 + step))
    fresh = conv_norm(name)
    fresh.load_state_dict(model.state_dict())
    for train in (False, True):
        torch.testing.assert_close(fresh.train(train)(data()), model.train(train)(data()))


@pytest.mark.parametrize("name", BATCH_DEPENDENT)
def test_population_statistics_are_declared_buffers(name: str) -> None:
    """What DDP reconciliation averages (population_buffers) are floating buffers that training
    updates and evaluation leaves alone; the counter counts training batches."""
    model = conv_norm(name, None)
    layer = model[1]
    buffers = dict(layer.named_buffers())
    assert all(buffers[b].is_floating_point() for b in layer.population_buffers)
    assert not buffers[layer.population_counter].is_floating_point()
    before = [t.clone() for t in layer.population_tensors()]
    model.eval()(data())
    assert all(torch.equal(a, b) for a, b in zip(before, layer.population_tensors(), strict=True))
    model.train()(data())
    assert all(
        not torch.equal(a, b) for a, b in zip(before, layer.population_tensors(), strict=True)
    )
    assert int(buffers[layer.population_counter]) >= 1


@pytest.mark.parametrize("name", BATCH_DEPENDENT)
def test_example_weighed_inference_is_a_declared_capability(name: str) -> None:
    """eval_alpha works where the layer class declares supports_eval_alpha and is refused,
    naming the methods that have it, where it does not."""
    model = conv_norm(name, None).train()
    model(data(8))
    model.eval()
    layer, x = model[1], data(seed=3)
    plain = model(x)
    if not get_norm_spec(name).supports_eval_alpha:
        with pytest.raises(ValueError, match="norm=" + ", ".join(eval_alpha_norms()[:-1])):
            set_eval_alpha(layer, 0.5)
        return
    set_eval_alpha(layer, 0.5)
    assert layer.eval_alpha == 0.5 and not torch.allclose(model(x), plain)
    set_eval_alpha(layer, 0.0)
    torch.testing.assert_close(model(x), plain)


def test_registration_refuses_a_builder_without_its_layer_class() -> None:
    def build_unannotated(num_channels: int, *, eps: float = 1e-5):  # type: ignore[no-untyped-def]
        """No return annotation."""
        return NormLayer()

    with pytest.raises(ValueError, match="annotate the builder's return type"):
        register_norm("unannotated", summary="x")(build_unannotated)
    assert "unannotated" not in available_norms()


def test_registration_refuses_test_params_that_are_no_parameters() -> None:
    def build_plain(num_channels: int, *, eps: float = 1e-5) -> NormLayer:
        """A plain layer."""
        return NormLayer()

    with pytest.raises(ValueError, match="test_params groups are no parameters"):
        register_norm("plain", summary="x", test_params={"groups": 2})(build_plain)
    assert "plain" not in available_norms()
