"""Power decomposition identity and its known extremes; probes of real models."""

from __future__ import annotations

import pytest
import torch

from normlab.diagnostics import gradient_norms, power_decomposition, probe_layers
from normlab.models import build_model
from normlab.norms import build_norm, norm_factory

pytestmark = pytest.mark.fast  # in-process: make test-fast


def test_power_terms_sum_to_the_total_power() -> None:
    y = torch.randn(8, 6, 5, 5) * torch.rand(1, 6, 1, 1) * 3 + torch.randn(8, 6, 1, 1)
    d = power_decomposition(y)
    assert abs(d["power"] - (d["power_const"] + d["power_inst"] + d["power_spatial"])) < 1e-10
    assert 0 <= d["collapse_ratio"] <= 1 and 0 <= d["instance_ratio"] <= 1


def test_instance_norm_output_has_no_between_instance_power() -> None:
    layer = build_norm("in", 6)
    d = power_decomposition(layer(torch.randn(8, 6, 5, 5) * 4 + 2))
    assert d["instance_ratio"] < 1e-10
    assert d["instance_std_cv"] < 1e-3


def test_channel_constant_input_has_collapse_ratio_one() -> None:
    y = torch.randn(1, 6, 1, 1).expand(8, 6, 5, 5)
    assert abs(power_decomposition(y)["collapse_ratio"] - 1) < 1e-12


def test_probe_measures_every_norm_layer_in_depth_order() -> None:
    model = build_model({"name": "resnet20"}, norm_factory("bn"), 10)
    records = probe_layers(model, torch.randn(16, 3, 32, 32))
    assert len(records) == 19 and [r.depth for r in records] == list(range(19))
    assert records[0].name == "stem.1"
    assert all("stat_mean_gap" in r.metrics for r in records), (
        "BN layers report batch vs population"
    )
    assert model.training, "the probe restores the model's mode"


def test_gradient_norms_leave_the_model_as_it_was() -> None:
    model = build_model({"name": "resnet20"}, norm_factory("bn"), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = gradient_norms(model, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert len(norms) == len(list(model.parameters())) and all(v >= 0 for v in norms.values())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert all(p.grad is None for p in model.parameters())
