"""The run spec (issue 18): a run's norm, batch, devices and learning rate read from the
composed config once, and what the run records and prints derived from it."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from normlab.job.build import run_axes
from normlab.job.spec import RunSpec, run_spec
from tests.helpers import compose_config

pytestmark = pytest.mark.fast  # in-process: make test-fast


def test_the_spec_reads_norm_batch_devices_and_the_scaled_rate() -> None:
    cfg = compose_config(
        ["norm=gn", "norm.groups=4", "batch_size=8", "virtual_devices=4", "optim.lr=0.2",
         "optim.ref_batch_size=64", "+trainer.accumulate_grad_batches=2"]
    )  # fmt: skip
    spec = run_spec(cfg)
    assert (spec.norm, spec.norm_params["groups"]) == ("gn", 4)
    assert spec.global_batch == 8 * 4 * 1 * 2
    assert spec.lr == pytest.approx(0.2 * 64 / 64)
    assert spec.lr_line() == (
        "normlab: learning rate 0.2 (optim.lr 0.2 scaled to the global batch 64: batch_size 8 x "
        "virtual_devices 4 x 1 device(s) x 2 accumulation / optim.ref_batch_size 64)"
    )
    axes = run_axes(cfg, spec)
    assert (axes["norm"], axes["batch_size"], axes["virtual_devices"]) == ("gn", 8, 4)
    assert axes["base_lr"] == 0.2 and axes["norm_params"] == spec.norm_params


def test_no_reference_batch_means_no_scaling() -> None:
    spec = RunSpec("bn", {}, 32, 8, 1, 1, 0.1, None)
    assert spec.global_batch == 256 and spec.lr == 0.1


@pytest.mark.parametrize("value", [0, -2])
def test_a_bad_virtual_device_count_is_named(value: object) -> None:
    cfg = compose_config([])
    cfg.virtual_devices = value
    with pytest.raises(ValueError, match="virtual_devices must be an int >= 1"):
        run_spec(cfg)


def test_the_spec_holds_the_runs_settings_typed_by_their_schemas() -> None:
    """Callbacks read typed settings from the spec, not string keys of the whole config."""
    from normlab.config.schemas import CheckpointConfig, DebugConfig, PreciseBNConfig

    cfg = compose_config(["precise_bn.num_samples=100", "callbacks.checkpoint.save_best=false",
                          "seed=3", "eval_stats=batch", "callbacks.progress=none"])  # fmt: skip
    spec = run_spec(cfg)
    assert isinstance(spec.precise_bn, PreciseBNConfig) and spec.precise_bn.num_samples == 100
    assert isinstance(spec.checkpoint, CheckpointConfig) and spec.checkpoint.save_best is False
    assert isinstance(spec.debug, DebugConfig) and spec.debug.stop_after_epochs is None
    assert (spec.seed, spec.eval_stats, spec.progress) == (3, "batch", "none")


def test_a_saved_config_of_an_older_run_reads_into_the_schema() -> None:
    """eval.py reads a run folder's plain YAML: keys the schema no longer has are left out,
    keys it gained take the schema's defaults."""
    from normlab.config.schemas import CheckpointConfig
    from normlab.job.spec import typed

    saved = OmegaConf.create({"enabled": True, "save_last": False, "every_n": 3})
    assert typed(CheckpointConfig, saved) == CheckpointConfig(save_last=False)
