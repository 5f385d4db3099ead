"""Sweep folders -> tables and plots. Reads only results.json files, so a report can be made
while a sweep runs or after some of its jobs failed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from normlab.reporting.aggregate import UNREADABLE, axis_label, flatten_norm_params, own_runs
from normlab.reporting.paper_report import swept_axes, with_epoch_budget, write_paper_report
from normlab.results import (
    COLUMN_FIELDS,
    RESULTS_FILE,
    MalformedResults,
    compared_metric,
    load_record,
)

# Columns of results.csv: RunResult's Column fields, then the shifted-domain accuracies taken
# out of its domain_shift field (with the source statistics, with re-estimated ones).
SHIFT_COLUMNS = {
    "shift_acc_source_stats": "target_acc_source_stats",
    "shift_acc_target_stats": "target_acc_target_stats",
}
COLUMNS = [*COLUMN_FIELDS, *SHIFT_COLUMNS]
# What a row of a compared PreciseBN evaluation does not share with its run: metrics that were
# measured with the run's own statistics only.
DERIVED_LEAVE_OUT = ("precise_bn_compare", "val_loss", "val_acc5", "diagnostics", "domain_shift",
                     *SHIFT_COLUMNS)  # fmt: skip


def collect_results(folder: Path) -> pd.DataFrame:
    """One row per run folder below `folder` holding a results.json."""
    rows = []
    for path in sorted(Path(folder).rglob(RESULTS_FILE)):
        try:
            record = dict(load_record(path))
        except MalformedResults as error:  # named, counted as unreadable, never averaged
            print(f"normlab: warning: {error}", file=sys.stderr)
            record = {"status": UNREADABLE}
        record["run"] = str(path.parent.relative_to(folder)) or "."
        shift = record.get("domain_shift") or {}
        for column, key in SHIFT_COLUMNS.items():
            record[column] = shift.get(key)
        rows.append(record)
        rows.extend(compared_rows(record))
    if not rows:
        raise FileNotFoundError(f"no {RESULTS_FILE} below {folder}")
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    return with_epoch_budget(frame)


def compared_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per PreciseBN sample count a run was also evaluated with
    (precise_bn.compare_samples): the run's axes with that `precise_bn_samples`, the accuracy
    and history of that evaluation, and `compared_from` naming the run. Reports then compare
    EMA and PreciseBN as rows, like separate runs, though both come from the same weights."""
    rows = []
    for samples in record.get("precise_bn_compare") or {}:
        key = compared_metric(int(samples))
        history = [
            {"epoch": epoch["epoch"], "val/acc": epoch[key]}
            for epoch in record.get("history") or []
            if epoch.get(key) is not None
        ]
        row = {k: v for k, v in record.items() if k not in DERIVED_LEAVE_OUT}
        row.update(
            run=f"{record['run']}+precise_bn_{samples}",
            compared_from=record["run"],
            precise_bn_samples=int(samples),
            val_acc=record["precise_bn_compare"][samples],
            best_val_acc=max((e["val/acc"] for e in history), default=None),
            history=history,
        )
        rows.append(row)
    return rows


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """How many runs completed, diverged, failed (or are still running); PreciseBN evaluations
    compared within a run are not runs of their own."""
    return {str(k): int(v) for k, v in own_runs(frame)["status"].value_counts().items()}


def varied_axes(frame: pd.DataFrame) -> list[str]:
    """The swept axes besides norm and batch size (the table's columns) of a frame whose norm
    parameters are flattened, as every report of normlab defines them
    (normlab.reporting.paper_report.swept_axes)."""
    return [a for a in swept_axes(frame) if a not in ("norm", "batch_size")]


def accuracy_table(frame: pd.DataFrame, value: str = "best_val_acc") -> pd.DataFrame:
    """Mean `value` (in %) per norm (rows; with any varied statistics axis) and batch size
    (columns) over completed runs and seeds."""
    done = frame[(frame["status"] == "completed") & frame[value].notna()]
    if done.empty:
        return pd.DataFrame()
    done = flatten_norm_params(done)
    index = ["norm", *varied_axes(done)]
    done = done.assign(**{axis: done[axis].map(axis_label) for axis in index[1:]})
    table = done.pivot_table(index=index, columns="batch_size", values=value, aggfunc="mean")
    return (table * 100).round(2)


def shift_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Shifted-domain accuracy (%) with the source statistics and re-estimated ones, per norm and
    batch size, where runs measured it (precise_bn.data)."""
    done = frame[frame["shift_acc_source_stats"].notna()]
    if done.empty:
        return pd.DataFrame()
    columns = ["shift_acc_source_stats", "shift_acc_target_stats"]
    table = done.groupby(["norm", "batch_size"])[columns].mean() * 100
    return table.rename(columns={columns[0]: "source stats", columns[1]: "re-estimated"}).round(2)


def write_report(folder: Path) -> dict[str, Path]:
    """results.csv (one row per run), table.txt (best accuracy, norm x batch), and the paper-style
    report (report.md, summary.csv, figures: see normlab.reporting.paper_report) in `folder`."""
    frame = collect_results(folder)
    outputs = {"csv": folder / "results.csv", "table": folder / "table.txt"}
    frame[[c for c in ["run", *COLUMNS] if c in frame]].to_csv(outputs["csv"], index=False)
    table = accuracy_table(frame)
    counts = ", ".join(f"{v} {k}" for k, v in status_counts(frame).items())
    text = f"runs: {len(own_runs(frame))} ({counts})\n\n"
    text += table.to_string() if not table.empty else "no completed runs yet"
    shifted = shift_table(frame)
    if not shifted.empty:
        text += "\n\naccuracy on the shifted domain (%)\n" + shifted.to_string()
    outputs["table"].write_text(text + "\n")
    paper = write_paper_report(frame, folder)
    if "accuracy vs batch per device" in paper:
        outputs["plot"] = paper.pop("accuracy vs batch per device")
    return {**outputs, **paper}
