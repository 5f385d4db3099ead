"""The fast PreciseBN path: moments, record_batch_norm, accumulation and the batched loader
against straightforward float64 references."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from normlab.data.tensors import NormalizeCollate, TensorImageDataset
from normlab.norms import build_norm
from normlab.norms.batch import BatchNorm2d
from normlab.norms.population import moments, record_batch_norm
from normlab.stats import update_population_stats
from normlab.stats.callbacks import training_loader

pytestmark = pytest.mark.fast  # in-process: make test-fast


def reference_moments(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and E[x^2] over `dims`, all in float64 (the old estimate, without float32 error)."""
    var, mean = torch.var_mean(x.double(), dim=dims, unbiased=False)
    return mean, var + mean * mean


def assert_var_close(mean: Tensor, ex2: Tensor, ref_mean: Tensor, ref_ex2: Tensor) -> None:
    """Means to 1e-6 of the spread, variances E[x^2] - mean^2 to 1e-6 relative."""
    ref_var = ref_ex2 - ref_mean * ref_mean
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-6 * float(ref_var.max().sqrt()))
    torch.testing.assert_close(ex2 - mean * mean, ref_var, rtol=1e-6, atol=0)


def offset_data(*shape: int, seed: int = 0) -> Tensor:
    """Data with per-channel offsets larger than the spread (where cancellation would show)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(1, shape[1], *[1] * (len(shape) - 2), generator=g) * 4
    return torch.randn(*shape, generator=g) * 3 + offsets + 5


@pytest.mark.parametrize(
    ("shape", "dims", "layout"),
    [
        ((32, 8, 9, 7), (0, 2, 3), "contiguous"),
        ((32, 8, 9, 7), (0, 2, 3), "channels_last"),
        ((32, 8, 9, 7), (0, 2, 3), "strided"),
        ((16, 4, 60), (0, 2), "contiguous"),
        ((16, 4, 60), (0, -1), "contiguous"),
        ((64, 6), (0,), "contiguous"),
    ],
)
def test_moments_equal_the_float64_reference(
    shape: tuple[int, ...], dims: tuple[int, ...], layout: str
) -> None:
    x = offset_data(*shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = offset_data(shape[0], shape[1], shape[2], 2 * shape[3])[..., ::2]
    mean, ex2 = moments(x, dims)
    assert mean.dtype == ex2.dtype == torch.float64
    assert_var_close(mean, ex2, *reference_moments(x, dims))


def test_moments_of_half_precision_are_float64() -> None:
    x = offset_data(8, 4, 5, 5).bfloat16()
    mean, ex2 = moments(x, (0, 2, 3))
    assert mean.dtype == torch.float64 and mean.shape == (4,)
    assert_var_close(mean, ex2, *reference_moments(x.float(), (0, 2, 3)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_record_batch_norm_normalizes_like_batch_norm_and_records_the_moments(
    channels_last: bool,
) -> None:
    layer = build_norm("bn", 8)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.uniform_(-1.0, 1.0)
    batches = [offset_data(n, 8, 6, 6, seed=n) for n in (16, 5, 2)]
    if channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    layer.start_recording()
    for x in batches:
        y = record_batch_norm(layer, x, layer.weight, layer.bias, layer.eps)
        expected = F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
        torch.testing.assert_close(y, expected)
    recorded = layer.recorded_moments()
    whole = torch.cat([b.contiguous() for b in batches])
    count = whole.numel() // 8
    torch.testing.assert_close(recorded[0], torch.full((8,), float(count), dtype=torch.float64))
    # channels_last: torch's CPU kernel sums in float32 in one pass (about 1e-5 relative)
    rtol = 1e-4 if channels_last else 1e-6
    ref_mean, ref_ex2 = reference_moments(whole, (0, 2, 3))
    mean, ex2 = recorded[1] / count, recorded[2] / count
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=rtol * 10)
    torch.testing.assert_close(ex2 - mean * mean, ref_ex2 - ref_mean**2, rtol=rtol, atol=0)


def test_record_batch_norm_refuses_one_value_per_channel() -> None:
    layer = build_norm("bn", 3)
    layer.start_recording()
    with pytest.raises(ValueError, match="more than one value per channel"):
        record_batch_norm(layer, torch.randn(1, 3), None, None)


def small_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        build_norm("bn", 8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        build_norm("bn", 16),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
        build_norm("bn", 4),
    )


def test_precise_bn_equals_the_reference_total_variance_estimate() -> None:
    """Equal weight per sample over uneven batches, the final batch of one dropped, and the
    result equal to E_b[var_b + mean_b^2] - mean^2 formed in float64 from each layer's inputs."""
    model = small_bn_net()
    with torch.no_grad():
        model[0].bias.add_(3.0)  # offsets larger than the spread
    x = offset_data(61, 3, 8, 8, seed=3)
    batches = [(b, torch.zeros(len(b))) for b in x.split([16, 16, 7, 20, 1, 1])]
    inputs: dict[nn.Module, list[Tensor]] = {}
    norms = [m for m in model if isinstance(m, BatchNorm2d)]
    hooks = [
        m.register_forward_pre_hook(lambda m, a: inputs.setdefault(m, []).append(a[0].clone()))
        for m in norms
    ]
    assert update_population_stats(model, batches, num_samples=60) == 3
    for hook in hooks:
        hook.remove()
    for norm in norms:
        seen = torch.cat(inputs[norm])
        assert len(seen) == 59  # 16 + 16 + 7 + 20: the trailing batch of one is not used
        ref_mean, ref_ex2 = reference_moments(seen, (0, 2, 3))
        torch.testing.assert_close(norm.running_mean.double(), ref_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            norm.running_var.double(), ref_ex2 - ref_mean**2, rtol=1e-6, atol=1e-7
        )


def image_module(pad: int, flip: bool, n: int = 40) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    collate = NormalizeCollate([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    return SimpleNamespace(train_set=TensorImageDataset(images, labels, pad, flip), collate=collate)


def test_batched_loader_serves_the_per_sample_order_and_values() -> None:
    module = image_module(pad=0, flip=False)
    plain = DataLoader(
        module.train_set,
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(7),
        collate_fn=module.collate,
    )
    fast = training_loader(module, 16, seed=7)  # type: ignore[arg-type]
    pairs = list(zip(plain, fast, strict=True))
    assert [len(b[0]) for b, _ in pairs] == [16, 16, 8]
    for (x, y), (fx, fy) in pairs:
        torch.testing.assert_close(fx, x)
        assert torch.equal(fy, y)


def test_batched_loader_augments_with_crops_and_flips_of_each_image() -> None:
    module = image_module(pad=2, flip=True)
    data = module.train_set
    mean, std = module.collate.mean, module.collate.std
    state = torch.get_rng_state()
    batches = list(training_loader(module, 16, seed=3))  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    again = list(training_loader(module, 16, seed=3))  # type: ignore[arg-type]
    offsets, flips = set(), set()
    for (x, y), (x2, _) in zip(batches, again, strict=True):
        torch.testing.assert_close(x, x2)  # reproducible from the seed
        for image, label in zip(x, y, strict=True):
            raw = (image * std[0] + mean[0]) * 255.0
            found = [
                (top, left, flip)
                for index in torch.nonzero(data.labels == label).flatten().tolist()
                for top in range(5)
                for left in range(5)
                for flip in (False, True)
                if torch.allclose(raw, _crop(data.images[index], top, left, flip), atol=1e-3)
            ]
            assert found, "a served image is no crop or flip of a training image"
            offsets.add(found[0][:2])
            flips.add(found[0][2])
    assert len(offsets) > 5 and flips == {False, True}


def _crop(padded: Tensor, top: int, left: int, flip: bool) -> Tensor:
    image = padded[:, top : top + 8, left : left + 8].float()
    return image.flip(-1) if flip else image
