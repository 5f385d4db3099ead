"""A real run with PreciseBN, FrozenBN, diagnostics and a shifted domain: what results.json says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import compose_config, run_train


def test_run_with_population_statistics_options(tmp_path: Path) -> None:
    from normlab.train import run

    run(
        compose_config(
            [
                "callbacks.progress=none",
                "print_config=false",
                "trainer.max_epochs=3",
                "data.train_samples=512",
                "precise_bn.num_samples=256",
                "frozen_bn.last_epochs=1",
                "diagnostics.every_n_epochs=1",
                "+precise_bn.data.corruption=contrast",
                "precise_bn.target_samples=256",
                "callbacks.checkpoint.enabled=false",
            ]
        ),
        tmp_path / "run",
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["precise_bn_samples"] == 256 and results["frozen_bn_last_epochs"] == 1
    diagnostics = results["diagnostics"]
    assert len(diagnostics["collapse_ratio"]) == 19 and diagnostics["epoch"] == 2
    assert set(diagnostics["train_test_gap"]) == {
        "val_acc_population_stats",
        "val_acc_batch_stats",
        "gap",
    }
    assert (tmp_path / "run" / "diagnostics.png").stat().st_size > 1000
    shift = results["domain_shift"]
    assert shift["data"] == {"corruption": "contrast"} and shift["target_stat_samples"] == 256
    assert 0 <= shift["target_acc_source_stats"] <= 1 and 0 <= shift["target_acc_target_stats"] <= 1


def test_eval_alpha_where_unsupported_is_a_user_error(tmp_path: Path) -> None:
    """A user error: one line without traceback on the command line (tests/test_bad_input.py)."""
    from normlab.results import USER_ERRORS
    from normlab.train import run

    cfg = compose_config(
        ["norm=iebn", "eval_alpha=0.5", "trainer.max_epochs=1", "data.train_samples=128"]
    )
    with pytest.raises(USER_ERRORS, match="does not implement example-weighed inference"):
        run(cfg, tmp_path / "run")


def test_alpha_is_chosen_on_held_out_training_samples(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    proc = run_train(
        [
            "batch_size=8",
            "trainer.max_epochs=1",
            "data.train_samples=256",
            "data.holdout_samples=64",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == (256 - 64) // 8, "held-out samples are not trained on"
    script = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "choose_alpha.py"),
            str(tmp_path / "run"),
            "--alphas",
            "0",
            "0.1",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert script.returncode == 0, script.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "alpha_selection.json").read_text())
    assert report["alphas"] == [0, 0.1, 1] and report["chosen_alpha"] in report["alphas"]
    best = max(report["holdout_acc"])
    assert report["holdout_acc"][report["alphas"].index(report["chosen_alpha"])] == best
