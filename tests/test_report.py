"""The sweep report reads results.json files, failed and running ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.reporting.aggregate import seed_summary
from normlab.reporting.paper_report import flatten_norm_params
from normlab.reporting.report import (
    accuracy_table,
    collect_results,
    status_counts,
    varied_axes,
    write_report,
)
from normlab.results import write_results

pytestmark = pytest.mark.fast  # in-process: make test-fast


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
            {
                "status": status,
                "norm": norm,
                "batch_size": batch,
                "best_val_acc": acc,
                "val_acc": acc,
            },
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


def test_report_splits_rows_by_a_varied_statistics_axis_and_shows_domain_shift(
    tmp_path: Path,
) -> None:
    for index, (samples, acc) in enumerate([(0, 0.6), (1000, 0.7)]):
        write_results(
            tmp_path / str(index),
            {
                "status": "completed",
                "norm": "bn",
                "batch_size": 8,
                "momentum": 0.1,
                "precise_bn_samples": samples,
                "best_val_acc": acc,
                "domain_shift": {"target_acc_source_stats": 0.3, "target_acc_target_stats": 0.5},
            },
        )
    write_results(  # another norm with its own default momentum: not a varied axis
        tmp_path / "2",
        {"status": "completed", "norm": "gn", "batch_size": 8, "momentum": None,
         "precise_bn_samples": 0, "best_val_acc": 0.5},
    )  # fmt: skip
    table = accuracy_table(collect_results(tmp_path))
    assert table.index.names == ["norm", "precise_bn_samples"]
    assert table.loc[("gn", "0"), 8] == 50.0
    assert table.loc[("bn", "0"), 8] == 60.0 and table.loc[("bn", "1000"), 8] == 70.0
    text = write_report(tmp_path)["table"].read_text()
    assert "shifted domain" in text and "re-estimated" in text and "50.0" in text


def test_results_json_holds_only_the_fields_of_run_result(tmp_path: Path) -> None:
    """RunResult is the schema: a field it does not list is refused, not silently written."""
    with pytest.raises(ValueError, match="results.json has no field best_acc"):
        write_results(tmp_path, {"status": "completed", "best_acc": 0.5})  # type: ignore[typeddict-unknown-key]
    assert not (tmp_path / "results.json").exists()


def test_a_rerun_sweep_skips_finished_jobs_and_refuses_another_job(tmp_path: Path) -> None:
    from normlab.results import finished_result

    job = ["norm=bn", "seed=0"]
    assert finished_result(tmp_path, job) is None  # nothing ran yet
    for status, bad_input, skipped in [
        ("completed", None, True),
        ("diverged", None, True),
        ("failed", True, True),  # bad input fails again the same way
        ("failed", False, False),  # e.g. a killed worker: run again
        ("running", None, False),  # interrupted: resumes from checkpoints/last.ckpt
    ]:
        record = {"status": status, "norm": "bn", "overrides": job}
        if bad_input is not None:
            record["bad_input"] = bad_input
        write_results(tmp_path, record)
        assert (finished_result(tmp_path, list(reversed(job))) is not None) is skipped, status
    with pytest.raises(ValueError, match="holds another job"):
        finished_result(tmp_path, ["norm=gn", "seed=0"])


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("norm_params", [{"groups": 1}, {"groups": 16}]),  # gn_groups
        ("base_lr", [0.1, 0.0125]),  # understanding_bn
        ("norm_weight_decay", ["false", "toward_one"]),  # four_things
        ("precision", ["32-true", "bf16-mixed"]),  # the recipe's paired check
    ],
)
def test_table_keeps_every_axis_the_sweep_varied_as_rows(
    tmp_path: Path, field: str, values: list
) -> None:
    for index, (value, acc) in enumerate(zip(values, (0.4, 0.8), strict=True)):
        for seed in (0, 1):
            write_results(
                tmp_path / f"{index}_{seed}",
                {"status": "completed", "norm": "gn", "batch_size": 32, "seed": seed,
                 "best_val_acc": acc, "val_acc": acc, field: value},
            )  # fmt: skip
    table = accuracy_table(collect_results(tmp_path))
    assert sorted(table[32].tolist()) == [40.0, 80.0], f"{field} was averaged over:\n{table}"


def test_malformed_results_are_named_and_the_report_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normlab.platform.sweep import summary_line

    make_sweep(tmp_path)
    bad = {"list": "[]", "null": "null", "types": '{"status": "completed", "val_acc": "high"}',
           "truncated": '{"status": "comp', "status": '{"status": "great"}'}  # fmt: skip
    for name, text in bad.items():
        (tmp_path / f"bad_{name}").mkdir()
        (tmp_path / f"bad_{name}" / "results.json").write_text(text)
    frame = collect_results(tmp_path)
    err = capsys.readouterr().err
    for name in bad:
        assert f"bad_{name}/results.json" in err, name
    assert status_counts(frame)["unreadable"] == len(bad)
    assert set(frame.loc[frame["status"] == "unreadable", "run"]) == {f"bad_{n}" for n in bad}
    assert accuracy_table(frame).loc["bn", 2] == 50.0  # the good runs still tabulated
    rows = seed_summary(frame, ["norm"])
    assert rows["norm"].tolist() == ["bn", "gn", "ln", "none"], (
        f"an unreadable record made a row:\n{rows}"
    )
    write_report(tmp_path)
    assert "11 jobs: 4 completed, 1 failed, 1 diverged, 5 without results" in summary_line(tmp_path)


def _record(folder: Path, acc: float, **fields: object) -> None:
    write_results(
        folder,
        {"status": "completed", "norm": "bn", "batch_size": 32, "seed": 0, "global_batch_size": 256,
         "base_lr": 0.1, "best_val_acc": acc, "val_acc": acc, "epochs": 30, **fields},
    )  # fmt: skip


def test_another_reference_batch_or_epoch_budget_is_another_row(tmp_path: Path) -> None:
    """The recipe's comparisons: lr 0.1 against 0.2 at one global batch (optim.ref_batch_size
    changed, optim.lr not), 15 epochs against 30 (a record from before max_epochs was recorded
    counts the epochs it completed). Both used to be averaged into one row."""
    _record(tmp_path / "a", 0.80, lr=0.1)  # no max_epochs: an older record, 30 epochs trained
    _record(tmp_path / "b", 0.90, lr=0.2, max_epochs=30)
    _record(tmp_path / "c", 0.70, lr=0.2, max_epochs=15, epochs=15)
    frame = collect_results(tmp_path)
    assert varied_axes(flatten_norm_params(frame)) == ["lr", "max_epochs"]
    assert sorted(accuracy_table(frame)[32].tolist()) == [70.0, 80.0, 90.0]


def test_a_learning_rate_that_follows_the_batch_is_no_axis(tmp_path: Path) -> None:
    """gn_batch_size: the linear scaling rule gives each batch its own lr; no extra column."""
    for batch, acc in ((2, 0.5), (32, 0.8)):
        _record(tmp_path / str(batch), acc, batch_size=batch, global_batch_size=8 * batch,
                lr=0.1 * 8 * batch / 256, max_epochs=30)  # fmt: skip
    assert varied_axes(flatten_norm_params(collect_results(tmp_path))) == []
