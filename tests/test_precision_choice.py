"""Mixed precision where the machine runs it natively (normlab.platform.precision): scale=cifar asks for
bf16-mixed, which an AVX2-only CPU emulates with 31x slower convolutions, so a preset there
runs in float32 and records it."""

from __future__ import annotations

import pytest

import normlab.platform.precision
from normlab.platform.precision import native_precision
from tests.helpers import compose_config


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_cpu_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(normlab.platform.precision, "cpu_has_native_bf16", lambda: native)
    assert native_precision("bf16-mixed", "cpu") == ("bf16-mixed" if native else "32-true")
    assert native_precision("16-mixed", "cpu") == "32-true"  # fp16 autocast is a CUDA setting
    assert native_precision("32-true", "cpu") == "32-true"


@pytest.mark.parametrize("native", [True, False])
def test_a_preset_resolves_and_records_the_precision_it_runs(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    from normlab.job.build import run_axes

    monkeypatch.setattr(normlab.platform.precision, "cpu_has_native_bf16", lambda: native)
    cfg = compose_config(["experiment=bn_baseline"])
    expected = "bf16-mixed" if native else "32-true"
    assert cfg.trainer.precision == expected
    assert run_axes(cfg)["precision"] == expected
    chosen = compose_config(["experiment=bn_baseline", "trainer.precision=bf16-mixed"])
    assert chosen.trainer.precision == "bf16-mixed", "an explicit choice is kept"


def test_this_machine_answers_without_error() -> None:
    assert isinstance(normlab.platform.precision.cpu_has_native_bf16(), bool)
