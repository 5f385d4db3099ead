"""The debug group (conf/debug, lightning-hydra-template style): each option shrinks or
instruments a real run in process, and the run is recorded with status 'debug'."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli import check_config_overrides, check_group_overrides
from normlab.results import read_results
from tests.helpers import CONF_DIR, compose_config, run_in_process, shrunk

# 64 digits in batches of 16: 4 training steps per epoch, one validation batch.
# no epoch count: the debug options set their own (and the sanity pass stays the config's)
TINY = shrunk("data.val_samples=32", "batch_size=16", "threads=1", "callbacks.checkpoint.enabled=false",
              "logger=none", without=["trainer.max_epochs", "trainer.num_sanity_val_steps"])  # fmt: skip


def _run(overrides: list[str], output_dir: Path) -> dict:
    results = run_in_process([*TINY, *overrides], output_dir)
    assert read_results(output_dir)["status"] == results["status"]
    return results


@pytest.mark.parametrize(
    ("overrides", "steps", "epochs", "status"),
    [
        (["debug=fdr"], 1, 1, "debug"),  # one batch of training, one of validation
        (["debug=limit"], 2 * 3, 2, "debug"),  # 2 epochs of 3 batches
        (  # the same 3 batches, validated every epoch
            ["debug=overfit", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"],
            2 * 3,
            2,
            "debug",
        ),
        (["debug=limit", "debug.stop_after_epochs=1"], 3, 1, "interrupted"),  # resume tests
        (["+trainer.limit_train_batches=2", "trainer.max_epochs=1"], 2, 1, "debug"),  # by hand
    ],
)
def test_debug_options_shrink_the_run_and_record_it_as_debug(
    overrides: list[str], steps: int, epochs: int, status: str, tmp_path: Path
) -> None:
    results = _run(overrides, tmp_path)
    assert results["status"] == status, results.get("error")
    assert results["steps"] == steps and results["epochs"] == epochs
    assert results["val_acc"] is not None  # validation ran
    if status == "debug":
        assert results["debug"]  # what made it a debug run


def test_debug_profiler_writes_its_report_into_the_run_folder(tmp_path: Path) -> None:
    results = _run(["debug=profiler"], tmp_path)
    assert results["status"] == "debug" and results["epochs"] == 1 and results["steps"] == 4
    profile = tmp_path / "fit-profile.txt"
    assert profile.is_file() and "run_training_epoch" in profile.read_text()


def test_debug_is_a_group_whose_options_are_checked() -> None:
    assert check_group_overrides(["debug=fdr"], CONF_DIR) is None
    assert check_config_overrides(["debug=limit", "debug.stop_after_epochs=1"], CONF_DIR) is None
    message = check_group_overrides(["debug=nope"], CONF_DIR)
    assert message is not None and "\n" not in message
    assert "unknown debug 'nope'; valid choices: fdr, limit, none, overfit, profiler" in message
    message = check_config_overrides(["debug=limit", "debug.stop_after=1"], CONF_DIR)
    assert message is not None and "did you mean 'debug.stop_after_epochs'?" in message


def test_a_real_run_is_no_debug_run() -> None:
    cfg = compose_config([])
    assert cfg.debug.option is None and cfg.debug.stop_after_epochs is None
    assert compose_config(["debug.stop_after_epochs=1"]).debug.stop_after_epochs == 1
