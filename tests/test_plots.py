"""The report's figures draw completed seeds with their spread, from rows of a sweep."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from normlab.reporting.plots import (
    epoch_curves,
    plot_accuracy_by_epoch,
    plot_accuracy_vs_batch,
    plot_diagnostics_by_depth,
)

pytestmark = pytest.mark.fast  # in-process: make test-fast


def sweep_rows(batch_sizes: tuple[int, ...]) -> pd.DataFrame:
    rows = []
    for norm in ("bn", "gn"):
        for batch in batch_sizes:
            for seed in (0, 1):
                acc = 0.5 + 0.01 * seed + (0.1 if norm == "gn" else 0.0)
                rows.append(
                    {
                        "norm": norm, "batch_size": batch, "seed": seed, "status": "completed",
                        "val_acc": acc,
                        "history": [{"epoch": 0, "val/acc": acc - 0.1}, {"epoch": 1, "val/acc": acc}],
                        "diagnostics": {"collapse_ratio": [0.1, 0.2, 0.3], "instance_ratio": [0.5, 0.4, 0.3],
                                        "act_std": [1.0, 1.0, 1.0]},
                    }
                )  # fmt: skip
    rows.append({"norm": "bn", "batch_size": batch_sizes[0], "seed": 2, "status": "diverged",
                 "val_acc": None, "history": [{"epoch": 0, "val/acc": 0.0}]})  # fmt: skip
    return pd.DataFrame(rows)


def test_figures_are_drawn_for_several_and_for_one_batch_size(tmp_path: Path) -> None:
    for sizes in ((2, 8, 32), (8,)):
        frame = sweep_rows(sizes)
        assert (
            plot_accuracy_vs_batch(frame, tmp_path / f"b{len(sizes)}.png", ["norm"]).stat().st_size
            > 5000
        )
    assert plot_accuracy_by_epoch(frame, tmp_path / "epochs.png", ["norm"]).stat().st_size > 5000
    assert plot_diagnostics_by_depth(frame, tmp_path / "depth.png", ["norm"]).stat().st_size > 5000


def test_epoch_curves_leave_out_unfinished_and_diverged_runs() -> None:
    curves = epoch_curves(sweep_rows((2,)), ["norm"]).set_index(["norm", "epoch"])
    assert curves.loc[("bn", 0), "n"] == 2  # the diverged seed's history is not averaged in
    assert abs(curves.loc[("bn", 1), "mean"] - 50.5) < 1e-9


def test_no_diagnostics_no_figure(tmp_path: Path) -> None:
    frame = sweep_rows((2,)).drop(columns="diagnostics")
    assert plot_diagnostics_by_depth(frame, tmp_path / "d.png", ["norm"]) is None


def test_accuracy_by_epoch_has_one_panel_per_batch_size_when_the_sweep_varies_it(
    tmp_path: Path,
) -> None:
    from PIL import Image

    frame = sweep_rows((2, 8, 32))
    one = plot_accuracy_by_epoch(frame, tmp_path / "one.png", ["norm"])
    panels = plot_accuracy_by_epoch(frame, tmp_path / "panels.png", ["norm", "batch_size"])
    single_batch = plot_accuracy_by_epoch(
        sweep_rows((8,)), tmp_path / "single.png", ["norm", "batch_size"]
    )
    width = {p.stem: Image.open(p).size[0] for p in (one, panels, single_batch)}
    assert width["panels"] > 2 * width["one"]  # three panels side by side
    assert width["single"] == width["one"]  # one batch size: one panel
