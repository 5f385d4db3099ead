"""The sweep report reads results.json files, failed and running ones included."""

from __future__ import annotations

from pathlib import Path

from normlab.report import accuracy_table, collect_results, status_counts, write_report
from normlab.results import write_results


def make_sweep(folder: Path) -> None:
    runs = [
        ("bn", 2, "completed", 0.5),
        ("bn", 32, "completed", 0.9),
        ("gn", 2, "completed", 0.8),
        ("gn", 32, "completed", 0.85),
        ("none", 32, "diverged", None),
        ("ln", 2, "failed", None),
    ]
    for index, (norm, batch, status, acc) in enumerate(runs):
        write_results(
            folder / str(index),
            {"status": status, "norm": norm, "batch_size": batch, "best_val_acc": acc},
        )


def test_report_counts_statuses_and_tabulates_completed_runs(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    frame = collect_results(tmp_path)
    assert status_counts(frame) == {"completed": 4, "diverged": 1, "failed": 1}
    table = accuracy_table(frame)
    assert table.loc["bn", 2] == 50.0 and table.loc["gn", 32] == 85.0
    assert "ln" not in table.index
    outputs = write_report(tmp_path)
    assert outputs["plot"].stat().st_size > 1000
    assert "6 (4 completed, 1 diverged, 1 failed)" in outputs["table"].read_text()
