"""Every registered method under mixed precision (a new method needs no edit here): under
autocast it computes in float32 on the bf16 input it receives, exactly as its float32 layer
does on the same bf16-rounded input, returns the autocast dtype and keeps its running buffers
in float32, equal to the float32 layer's; and channels_last input gives the numbers of NCHW."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from normlab.models import build_model
from normlab.norms import available_norms, norm_factory
from tests.norms.test_registry import conv_norm

pytestmark = pytest.mark.fast  # in-process: make test-fast

NAMES = available_norms()


def float_state(layer: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in layer.state_dict().items() if v.is_floating_point()}


def fp32_input(seed: int) -> Tensor:
    return torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.7


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("name", NAMES)
def test_autocast_computes_in_float32_and_returns_the_autocast_dtype(
    name: str, activation: str | None
) -> None:
    """The conv before the layer runs in bf16 under autocast; the float32 reference layer gets
    exactly that bf16 output as float32 (and the same conv input and weights, which CBN reads)."""
    model = conv_norm(name, activation)
    reference = copy.deepcopy(model)
    conv_out: list[Tensor] = []
    model[0].register_forward_hook(lambda m, i, out: conv_out.append(out))
    reference[0].register_forward_hook(lambda m, i, out: conv_out[-1].float())
    for step, mode in enumerate(("train", "train", "eval")):  # training moves the buffers
        model.train(mode == "train")
        reference.train(mode == "train")
        x = fp32_input(seed=step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert conv_out[-1].dtype == torch.bfloat16, "the layer's input is bf16 under autocast"
        expected = reference(x)
        assert out.dtype == torch.bfloat16, f"{name} returned {out.dtype} under autocast"
        assert torch.equal(out, expected.bfloat16()), f"{name} did not compute in float32"
        for key, value in float_state(model[1]).items():
            assert value.dtype == torch.float32, f"{name}.{key} became {value.dtype}"
            assert torch.equal(value, float_state(reference[1])[key]), f"{name}.{key} differs"


@pytest.mark.parametrize("name", NAMES)
def test_autocast_gradients_reach_float32_parameters(name: str) -> None:
    model = conv_norm(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fp32_input(seed=3))
    out.float().square().mean().backward()
    for parameter in model.parameters():
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32 and parameter.grad is not None
            assert torch.isfinite(parameter.grad).all()


def test_without_autocast_a_layer_keeps_its_input_precision() -> None:
    model = conv_norm("bn").double()
    assert model(fp32_input(seed=0).double()).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_input_gives_the_numbers_of_nchw(name: str) -> None:
    model = conv_norm(name).train()
    other = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for seed in (0, 1):
        x = fp32_input(seed)
        torch.testing.assert_close(
            other(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-5, atol=1e-5
        )
    for key, value in float_state(model[1]).items():
        torch.testing.assert_close(float_state(other[1])[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_a_channels_last_model_trains_as_the_nchw_one(name: str) -> None:
    torch.manual_seed(0)
    cfg = {"source": "normlab", "name": "resnet20"}
    factory = norm_factory(name, **conv_params(name))
    plain = build_model(cfg, factory, 10, 3, 16)
    fast = build_model({**cfg, "channels_last": True}, factory, 10, 3, 16)
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def conv_params(name: str) -> dict[str, object]:
    from normlab.norms import get_norm_spec

    return dict(get_norm_spec(name).test_params)


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_class_forward_is_guarded_its_own_or_inherited(name: str) -> None:
    """GroupNorm's forward is torch's: CPU autocast happens to return bf16 from it, CUDA
    autocast returns float32; the guard makes every method return the autocast dtype."""
    from normlab.norms import get_norm_spec
    from normlab.norms.base import FLOAT32_GUARD

    assert getattr(get_norm_spec(name).layer.forward, FLOAT32_GUARD, False), name
