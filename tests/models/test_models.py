"""Every model builds with every core norm; the ResNets have the published shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from normlab.models import build_model
from normlab.models.timm_backbone import foreign_norm_layers
from normlab.norms import NormLayer, is_norm_layer, norm_factory

pytestmark = pytest.mark.fast  # in-process: make test-fast

CORE_NORMS = ["none", "bn", "ln", "in", "gn"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm", CORE_NORMS)
@pytest.mark.parametrize(
    "model_cfg",
    [
        {"name": "resnet20"},
        {"name": "resnet20", "preact": True},
        {"name": "resnet56"},
        {"name": "resnet18"},
        {"name": "resnet50"},
    ],
    ids=["resnet20", "preact_resnet20", "resnet56", "resnet18", "resnet50"],
)
def test_models_build_with_every_core_norm(model_cfg: dict, norm: str) -> None:
    model = build_model(model_cfg, norm_factory(norm), num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert not foreign_norm_layers(model)
    assert any(isinstance(m, NormLayer) for m in model.modules())


def test_resnet110_builds() -> None:
    model = build_model({"name": "resnet110"}, norm_factory("bn"), 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet_parameter_counts_match_he_et_al() -> None:
    # He et al. (2016), Table 6: ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.7M parameters.
    bn = norm_factory("bn")
    assert round(count_params(build_model({"name": "resnet20"}, bn, 10)) / 1e6, 2) == 0.27
    assert round(count_params(build_model({"name": "resnet56"}, bn, 10)) / 1e6, 2) == 0.85
    assert round(count_params(build_model({"name": "resnet110"}, bn, 10)) / 1e6, 1) == 1.7


def test_imagenet_resnets_match_torchvision_parameter_counts() -> None:
    import torchvision

    bn = norm_factory("bn")
    for name in ("resnet18", "resnet50"):
        ours = build_model({"name": name, "stem": "imagenet"}, bn, 1000, image_size=224)
        reference = getattr(torchvision.models, name)()
        assert count_params(ours) == count_params(reference), name


def test_every_norm_is_built_through_the_factory_with_its_activation() -> None:
    calls: list[tuple[int, str | None]] = []
    base = norm_factory("gn", groups=1)

    def recording(num_channels: int, activation: str | None = None) -> nn.Module:
        calls.append((num_channels, activation))
        return base(num_channels, activation)

    post = build_model({"name": "resnet20"}, recording, 10)
    assert ("relu" in {a for _, a in calls}) and (None in {a for _, a in calls})
    assert sum(is_norm_layer(m) for m in post.modules()) >= len(calls)
    calls.clear()
    build_model({"name": "resnet20", "preact": True}, recording, 10)
    assert all(a == "relu" for _, a in calls), "pre-activation: every norm feeds an activation"


def test_zero_init_last_zeroes_the_last_norm_of_each_branch() -> None:
    model = build_model({"name": "resnet20", "zero_init_last": True}, norm_factory("bn"), 10)
    for block in model.stages.modules():
        if hasattr(block, "norm2"):
            assert torch.count_nonzero(block.norm2.weight) == 0
            assert torch.count_nonzero(block.norm1.norm.weight) > 0


def test_zero_init_last_preact_zeroes_the_last_conv() -> None:
    model = build_model(
        {"name": "resnet20", "preact": True, "zero_init_last": True}, norm_factory("gn"), 10
    )
    blocks = [m for m in model.modules() if hasattr(m, "conv2")]
    assert blocks and all(torch.count_nonzero(b.conv2.weight) == 0 for b in blocks)


def test_stem_auto_picks_cifar_for_small_inputs() -> None:
    small = build_model({"name": "resnet18"}, norm_factory("bn"), 10, image_size=32)
    large = build_model({"name": "resnet18"}, norm_factory("bn"), 10, image_size=224)
    assert small.stem[0].kernel_size == (3, 3) and large.stem[0].kernel_size == (7, 7)


@pytest.mark.parametrize("name", ["resnet50", "resnetv2_50", "resnet18"])
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_timm_backbones_have_only_normlab_norms(name: str, norm: str) -> None:
    model = build_model({"source": "timm", "name": name}, norm_factory(norm), 10)
    assert not foreign_norm_layers(model)
    assert sum(is_norm_layer(m) for m in model.modules()) > 10
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_timm_fused_family_keeps_its_activations() -> None:
    model = build_model({"source": "timm", "name": "resnetv2_50"}, norm_factory("gn"), 10)
    fused = [m for m in model.modules() if type(m).__name__ == "NormAct"]
    assert fused, "resnetv2 norms own their activation: normlab must build norm+act"


def test_unknown_models_and_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet21'; valid choices"):
        build_model({"name": "resnet21"}, norm_factory("bn"), 10)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model({"source": "timm", "name": "not_a_model_xyz"}, norm_factory("bn"), 10)
    with pytest.raises(ValueError, match="unknown normlab model option"):
        build_model({"name": "resnet20", "depth": 3}, norm_factory("bn"), 10)


STATE_DICT_KEYS = Path(__file__).with_name("resnet_state_dict_keys.json")


@pytest.mark.parametrize(
    ("layout", "model_cfg"),
    [
        ("resnet20", {"name": "resnet20"}),
        ("preact_resnet20", {"name": "resnet20", "preact": True}),
        ("preact_resnet20_shortcut_b", {"name": "resnet20", "preact": True, "shortcut": "B"}),
        ("resnet18", {"name": "resnet18"}),
        ("resnet50", {"name": "resnet50"}),
    ],
)
def test_resnet_state_dict_keys_are_unchanged(layout: str, model_cfg: dict) -> None:
    # Checkpoints load by these names: the recorded keys (in order) and shapes must not move.
    expected = json.loads(STATE_DICT_KEYS.read_text())[layout]
    model = build_model(model_cfg, norm_factory("bn"), 10)
    assert [f"{k} {list(v.shape)}" for k, v in model.state_dict().items()] == expected
