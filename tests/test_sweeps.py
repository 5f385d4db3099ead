"""Multirun sweeps survive failing and diverging jobs and end with one summary line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Shrink, run_train


def _statuses(sweep: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json")
    }


def test_sweep_records_failed_and_diverged_jobs_and_goes_on(tmp_path: Path, shrink: Shrink) -> None:
    # 4 jobs: (1e4, 16) completes; batch_size=0 fails (jobs 1, 3); loss threshold 1e-9 diverges.
    sweep = shrink(
        "model=resnet20", "logger=none", "divergence.loss_threshold=1e4,1e-9", "batch_size=16,0"
    )
    result = run_train([*sweep, "-m"], tmp_path)
    assert result.returncode == 1, "failed jobs fail the command:\n" + result.stderr[-2000:]
    statuses = _statuses(tmp_path / "sweep")
    assert statuses == {"0": "completed", "1": "failed", "2": "diverged", "3": "failed"}
    failed = json.loads((tmp_path / "sweep" / "1" / "results.json").read_text())
    assert "batch_size must be >= 1" in failed["error"]
    assert (
        "sweep finished: 4 jobs: 1 completed, 2 failed, 1 diverged; 4 launched, 0 skipped as "
        "already finished, 0 refused, 0 unrecorded" in result.stdout
    )
    assert "normlab: diverged (train loss " in result.stdout  # a diverged run says why

    # The same command again into the same folder: finished jobs (completed, diverged, failed on
    # bad input) are skipped; an interrupted one resumes from its last checkpoint.
    job0 = tmp_path / "sweep" / "0" / "results.json"
    job0.write_text(job0.read_text().replace('"completed"', '"interrupted"'))
    again = run_train([*sweep, "-m"], tmp_path)
    assert again.returncode == 1, again.stderr[-2000:]
    assert _statuses(tmp_path / "sweep") == statuses
    assert again.stdout.count("normlab: skipped, already") == 3
    assert (
        "4 jobs: 1 completed, 2 failed, 1 diverged; 1 launched, 3 skipped as already finished"
        in again.stdout
    )
    assert json.loads(job0.read_text())["resumed_from"].endswith("last.ckpt")
