"""The paper-style report of a preset sweep: mean ± std over completed seeds per setting, the
paper's numbers beside them, its claims judged, figures; partial sweeps included."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.reporting.report import collect_results, write_report
from normlab.results import write_results

pytestmark = pytest.mark.fast  # in-process: make test-fast


def make_gn_sweep(folder: Path) -> None:
    """BN and GN at batch 2 and 32, three seeds, with one failed, one diverged, one unfinished
    run and one seed that never started."""
    job = 0
    for norm, batch, accs in [
        ("bn", 2, [0.40, 0.44, "diverged"]),
        ("bn", 32, [0.80, 0.82, "running"]),
        ("gn", 2, [0.70, 0.72, 0.74]),
        ("gn", 32, [0.75, "failed"]),  # seed 2 missing
    ]:
        for seed, acc in enumerate(accs):
            status = acc if isinstance(acc, str) else "completed"
            record = {"status": status, "norm": norm, "batch_size": batch, "seed": seed,
                      "preset": "gn_batch_size", "norm_params": {"momentum": 0.1}}  # fmt: skip
            if status == "completed":
                history = [{"epoch": 0, "val/acc": acc - 0.1}, {"epoch": 1, "val/acc": acc}]
                record.update(val_acc=acc, best_val_acc=acc, history=history)
            write_results(folder / str(job), record)
            job += 1


def test_preset_sweep_report_has_spread_paper_column_claims_and_figures(tmp_path: Path) -> None:
    make_gn_sweep(tmp_path)
    outputs = write_report(tmp_path)
    text = outputs["markdown"].read_text()
    assert (
        "| norm | batch per device | val acc % (normlab) | top-1 % (paper) | paper source |" in text
    )
    assert "| bn | 2 | 42.00 ± 2.83 (n=2) [diverged 1] | 65.3 | gn: Table 2 |" in text
    assert "| bn | 32 | 81.00 ± 1.41 (n=2) [unfinished 1] | 76.4 | gn: Table 2 |" in text
    assert "| gn | 2 | 72.00 ± 2.00 (n=3) | 75.9 | gn: Table 2 |" in text
    assert "| gn | 32 | 75.00 (n=1) [failed 1] | 75.9 | gn: Table 2 |" in text
    assert "| GN is better than BN at a per-device batch of 2 | gn: Table 2 | agrees |" in text
    assert "| BN is better than GN at a per-device batch of 32 | gn: Table 2 | agrees |" in text
    assert "At 32 per device: BN > GN > LN > IN | gn: Table 1 | not measured" in text
    assert "Wu & He, Group Normalization, ECCV 2018" in text
    for name in ("plot", "accuracy after every epoch"):
        assert outputs[name].stat().st_size > 5000
    assert outputs["summary"].read_text().count("\n") == 5  # header + 4 settings


def test_a_sweep_without_a_preset_still_gets_its_table_and_plot(tmp_path: Path) -> None:
    for seed, acc in enumerate([0.5, 0.6]):
        write_results(tmp_path / str(seed), {"status": "completed", "norm": "gn", "batch_size": 8,
                                             "seed": seed, "val_acc": acc})  # fmt: skip
    outputs = write_report(tmp_path)
    text = outputs["markdown"].read_text()
    assert "| gn | 55.00 ± 7.07 (n=2) |" in text and "paper" not in text
    assert outputs["plot"].stat().st_size > 5000  # one batch size: one point per norm
    assert len(collect_results(tmp_path)) == 2


def test_runs_compared_with_precise_bn_give_rows_per_sample_count(tmp_path: Path) -> None:
    """A rethinking_ema sweep of EMA runs that were also evaluated with PreciseBN: each
    comparison is a row of its own, judged by the paper's claims, never counted as a run."""
    job = 0
    for batch, ema, precise in [
        (32, [0.50, 0.52], [0.53, 0.55]),
        (256, [0.20, 0.24], [0.40, 0.42]),
    ]:
        for seed in range(2):
            history = [
                {"epoch": e, "val/acc": ema[seed] - 0.1 * (1 - e), "val/loss": 1.0,
                 "val/acc_precise_bn_1000": precise[seed] - 0.1 * (1 - e) - 0.01,
                 "val/acc_precise_bn_10000": precise[seed] - 0.1 * (1 - e)}
                for e in range(2)
            ]  # fmt: skip
            write_results(
                tmp_path / str(job),
                {"status": "completed", "norm": "bn", "batch_size": batch, "seed": seed,
                 "momentum": 0.1, "precise_bn_samples": 0, "preset": "rethinking_ema",
                 "val_acc": ema[seed], "val_loss": 1.0, "history": history,
                 "precise_bn_compare": {"1000": precise[seed] - 0.01, "10000": precise[seed]}},
            )  # fmt: skip
            job += 1
    write_results(tmp_path / str(job), {"status": "running", "norm": "bn", "batch_size": 32,
                                        "seed": 2, "momentum": 0.1, "precise_bn_samples": 0,
                                        "preset": "rethinking_ema"})  # fmt: skip
    frame = collect_results(tmp_path)
    assert len(frame) == 5 + 8
    derived = frame[frame["compared_from"].notna()].set_index("run")
    row = derived.loc["1+precise_bn_10000"]
    assert row["compared_from"] == "1" and row["precise_bn_samples"] == 10000
    assert row["val_acc"] == 0.55 and row["best_val_acc"] == 0.55 and row["seed"] == 1
    assert [round(e["val/acc"], 6) for e in row["history"]] == [0.45, 0.55]
    assert row["val_loss"] is None or row["val_loss"] != row["val_loss"]  # not the EMA's loss
    text = write_report(tmp_path)["markdown"].read_text()
    assert text.startswith("runs: 5 (4 completed, 1 running), and 8 PreciseBN evaluations")
    assert "| 256 | 0 | 22.00 ± 2.83 (n=2) |" in text
    assert "| 256 | 10000 | 41.00 ± 1.41 (n=2) |" in text
    assert "| 32 | 0 | 51.00 ± 1.41 (n=2) [unfinished 1] |" in text
    assert (
        "| At a large batch (256) PreciseBN is better than a slow EMA (momentum 0.01) | "
        "rethinking: Section 3 | not measured" in text
    )
    assert "difference +18.50 at batch_size 256 vs +2.50 at batch_size 32" in text
    table = (tmp_path / "table.txt").read_text()
    assert table.startswith("runs: 5 (4 completed, 1 running)")


def test_a_norms_default_momentum_is_not_a_swept_axis_but_a_swept_momentum_is() -> None:
    import pandas as pd

    from normlab.reporting.paper_report import swept_axes

    runs = [("bn", 2, 0.1), ("bn", 4, 0.1), ("brn", 2, 0.01), ("brn", 4, 0.01), ("gn", 2, None)]
    frame = pd.DataFrame(
        [{"norm": n, "batch_size": b, "momentum": m, "status": "completed"} for n, b, m in runs]
    )
    assert swept_axes(frame) == ["norm", "batch_size"]
    swept = pd.concat([frame, pd.DataFrame([{"norm": "bn", "batch_size": 2, "momentum": 0.01}])])
    assert swept_axes(swept) == ["norm", "batch_size", "momentum"]
