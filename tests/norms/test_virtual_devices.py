"""Virtual devices: a layer normalizing per chunk equals k separate copies of it, each on its own
chunk (the literal computation k DDP ranks do), in outputs, gradients and (averaged) buffers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normlab.norms import build_norm, set_virtual_batch_size
from normlab.norms.population import population_layers, set_stats_mode
from normlab.norms.virtual import reconcile_virtual_ranks

pytestmark = pytest.mark.fast  # in-process: make test-fast

CHUNK = 4
RANKS = 3
# Every batch-dependent method that supports virtual devices, with small parameters.
SUPPORTED: dict[str, dict] = {
    "bn": {},
    "bn_cumulative": {"momentum": None},
    "ghost_bn": {"ghost_batch_size": 2},
    "ghost_bn_cumulative": {"ghost_batch_size": 2, "momentum": None},
    "bgn": {"groups": 4},
    "iebn": {},
    "batch_group": {"groups": 4, "examples_per_group": 2},
    # r and d active from the first step, so each rank's own moving averages matter
    "brn": {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "r_max": 1.5, "d_max": 0.5},
    "brn_cumulative": {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "momentum": None},
}
REFUSED = {"cbn": "window"}


def method(key: str) -> str:
    return key.removesuffix("_cumulative")


def make(key: str, channels: int = 8) -> nn.Module:
    torch.manual_seed(0)
    layer = build_norm(method(key), channels, **SUPPORTED[key]).double()
    with torch.no_grad():  # non-trivial affine and gate parameters
        for param in layer.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return layer


def float_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.named_buffers() if v.is_floating_point()}


@pytest.mark.parametrize("key", sorted(SUPPORTED))
def test_chunked_layer_equals_separate_ranks(key: str) -> None:
    layer = make(key)
    ranks = [copy.deepcopy(layer) for _ in range(RANKS)]
    set_virtual_batch_size(layer, CHUNK)
    layer.train()
    generator = torch.Generator().manual_seed(1)
    for _step in range(4):
        x = torch.randn(CHUNK * RANKS, 8, 5, 5, dtype=torch.float64, generator=generator) * 2 + 1
        upstream = torch.randn(x.shape, dtype=torch.float64, generator=generator)
        x_virtual = x.clone().requires_grad_(True)
        y_virtual = layer(x_virtual)
        (y_virtual * upstream).sum().backward()
        outputs, input_grads = [], []
        for rank, (module, part, up) in enumerate(
            zip(ranks, x.split(CHUNK), upstream.split(CHUNK), strict=True)
        ):
            part = part.clone().requires_grad_(True)
            out = module(part)
            (out * up).sum().backward()
            outputs.append(out.detach())
            input_grads.append(part.grad)
            assert rank < RANKS
        torch.testing.assert_close(y_virtual.detach(), torch.cat(outputs), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(x_virtual.grad, torch.cat(input_grads), rtol=1e-9, atol=1e-9)
        for name, param in layer.named_parameters():
            summed = sum(dict(m.named_parameters())[name].grad for m in ranks)
            torch.testing.assert_close(param.grad, summed, rtol=1e-9, atol=1e-9)
        layer.zero_grad()
        for module in ranks:
            module.zero_grad()
    rank_buffers = [float_buffers(m) for m in ranks]
    for name, buffer in float_buffers(layer).items():
        mean = torch.stack([b[name] for b in rank_buffers]).mean(0)
        torch.testing.assert_close(buffer, mean, rtol=1e-9, atol=1e-9, msg=name)
    for name, buffer in layer.named_buffers():
        if not buffer.is_floating_point():
            assert torch.equal(buffer, dict(ranks[0].named_buffers())[name]), name


@pytest.mark.parametrize("key", sorted(SUPPORTED))
def test_evaluation_never_splits_the_batch(key: str) -> None:
    layer = make(key).train()
    for _ in range(3):
        layer(torch.randn(8, 8, 5, 5, dtype=torch.float64))
    reference = copy.deepcopy(layer).eval()
    set_virtual_batch_size(layer, 2)
    layer.eval()
    x = torch.randn(8, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x))


class TwoLayers(nn.Module):
    """conv -> norm -> relu -> conv -> norm: recording the second norm sees the first's output."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = build_norm(method(key), 8, **SUPPORTED[key])
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.norm2 = build_norm(method(key), 8, **SUPPORTED[key])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))


def test_brn_ranks_collapse_to_their_mean_at_reconciliation() -> None:
    """After reconciliation every virtual rank continues from the mean, as real ranks do after
    normlab averages their buffers."""
    layer = make("brn")
    set_virtual_batch_size(layer, CHUNK)
    layer.train()
    x = torch.randn(CHUNK * RANKS, 8, 5, 5, dtype=torch.float64) * 3 + 1
    layer(x)
    reconciled = copy.deepcopy(layer)
    reconcile_virtual_ranks(reconciled)
    ranks = []
    for _ in range(RANKS):  # each real rank, after reconciliation, holds the mean buffers
        rank = copy.deepcopy(reconciled)
        set_virtual_batch_size(rank, None)
        ranks.append(rank)
    x2 = torch.randn(CHUNK * RANKS, 8, 5, 5, dtype=torch.float64)
    expected = torch.cat([m(part) for m, part in zip(ranks, x2.split(CHUNK), strict=True)])
    torch.testing.assert_close(reconciled(x2), expected, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(layer(x2), expected)  # without reconciliation the ranks differ


@pytest.mark.parametrize("key", ["bn", "ghost_bn", "bgn", "iebn", "batch_group", "brn"])
def test_precise_bn_recording_per_chunk(key: str) -> None:
    """Recording with chunks of b equals separate ranks each recording batches of b, their
    moments summed (what PreciseBN's all-reduce does)."""
    torch.manual_seed(3)
    model = TwoLayers(key).double()
    ranks = [copy.deepcopy(model) for _ in range(RANKS)]
    set_virtual_batch_size(model, CHUNK)
    for m in (model, *ranks):
        m.eval()
        set_stats_mode(m, "record")
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(CHUNK * RANKS, 3, 6, 6, dtype=torch.float64)
            model(x)
            for module, part in zip(ranks, x.split(CHUNK), strict=True):
                module(part)
    virtual_layers = population_layers(model)
    rank_layers = [population_layers(m) for m in ranks]
    for index, layer in enumerate(virtual_layers):
        summed = sum(layers[index].recorded_moments() for layers in rank_layers)
        torch.testing.assert_close(layer.recorded_moments(), summed, rtol=1e-10, atol=1e-10)


def test_syncbn_normalizes_over_all_chunks() -> None:
    """syncbn is synchronized across the virtual ranks too: the whole batch, like bn without
    virtual devices."""
    sync = build_norm("syncbn", 8).double()
    plain = build_norm("bn", 8).double()
    plain.load_state_dict(sync.state_dict())
    set_virtual_batch_size(sync, 2)
    x = torch.randn(8, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(sync.train()(x), plain.train()(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_methods_refuse_with_reason(name: str) -> None:
    layer = build_norm(name, 8)
    with pytest.raises(ValueError, match=rf"virtual_devices.*{name}.*{REFUSED[name]}"):
        set_virtual_batch_size(layer, 2)
    set_virtual_batch_size(layer, None)  # one device per rank is always fine


@pytest.mark.parametrize("name", ["gn", "ln", "in", "proxy_gn", "frn", "evonorm_s0", "none"])
def test_batch_independent_methods_are_unaffected(name: str) -> None:
    layer = build_norm(name, 8, activation="relu")
    assert set_virtual_batch_size(layer, 2) == 0


def test_batch_must_split_into_chunks() -> None:
    layer = build_norm("bn", 8)
    set_virtual_batch_size(layer, 3)
    with pytest.raises(ValueError, match="chunks of 3"):
        layer.train()(torch.randn(8, 8, 2, 2))
