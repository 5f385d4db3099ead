"""precise_bn.compare_samples: one run evaluated with its EMA and with PreciseBN gives exactly
what separate EMA and PreciseBN runs of the same seed give, epoch by epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_in_process, shrunk

COMMON = shrunk("trainer.max_epochs=2", "data.train_samples=256", "data.val_samples=128",
                "batch_size=16", "norm.momentum=0.01", "callbacks.checkpoint.enabled=false",
                "threads=1", without=["trainer.num_sanity_val_steps"])  # fmt: skip


def accuracies(results: dict, key: str = "val/acc") -> list[float]:
    return [epoch[key] for epoch in results["history"]]


def test_one_run_compares_its_ema_with_precise_bn_as_separate_runs_would(tmp_path: Path) -> None:
    compared = run_in_process([*COMMON, "precise_bn.compare_samples=[64,192]"], tmp_path / "c")
    ema = run_in_process(COMMON, tmp_path / "ema")
    precise = run_in_process([*COMMON, "precise_bn.num_samples=192"], tmp_path / "pbn")
    assert compared["status"] == ema["status"] == precise["status"] == "completed"
    # the comparison leaves the run's own statistics, its evaluation and its training alone
    assert accuracies(compared) == accuracies(ema)
    assert compared["train_loss"] == ema["train_loss"] == precise["train_loss"]
    assert accuracies(compared, "val/acc_precise_bn_192") == accuracies(precise)
    assert compared["precise_bn_compare"] == {
        "64": compared["history"][-1]["val/acc_precise_bn_64"],
        "192": precise["val_acc"],
    }
    # at momentum 0.01 after a few steps the EMA is far from the model: the comparison can tell
    assert accuracies(compared, "val/acc_precise_bn_192") != accuracies(compared)
    assert "precise_bn_compare" not in ema


def test_bad_compare_samples_are_refused_before_training(tmp_path: Path) -> None:
    from normlab.results import USER_ERRORS

    with pytest.raises(USER_ERRORS, match="precise_bn.compare_samples=1000 exceeds the 256"):
        run_in_process([*COMMON, "precise_bn.compare_samples=[1000]"], tmp_path / "big")
    with pytest.raises(USER_ERRORS, match="sample counts >= 1"):
        run_in_process([*COMMON, "precise_bn.compare_samples=[0]"], tmp_path / "zero")
