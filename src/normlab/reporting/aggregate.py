"""Seeds -> mean, spread and counts of a sweep's runs, as the paper report (report.md,
summary.csv) and docs/results.md show them; table.txt keeps its own plain mean per cell.

A mean is taken over completed runs only; failed, diverged and unfinished runs of the same
setting are counted beside it, never averaged in (a diverged seed is an outcome, not a zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

FINISHED_BAD = ("failed", "diverged")
UNREADABLE = "unreadable"  # the status report.collect_results gives a results.json it cannot read
COUNT_COLUMNS = ("n", "failed", "diverged", "unfinished")


def flatten_norm_params(frame: pd.DataFrame) -> pd.DataFrame:
    """Add one `norm.<param>` column per norm parameter (from results.json's norm_params), so a
    sweep over `norm.groups` can be grouped and selected like any other axis."""
    if "norm_params" not in frame:
        return frame
    params = frame["norm_params"].apply(lambda p: p if isinstance(p, Mapping) else {})
    keys = sorted({key for p in params for key in p})
    return frame.assign(**{f"norm.{key}": params.apply(lambda p, k=key: p.get(k)) for key in keys})


def own_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that are runs, without the rows of PreciseBN evaluations compared within a run
    (precise_bn.compare_samples; normlab.reporting.report.compared_rows), which name it in
    `compared_from`."""
    if "compared_from" not in frame:
        return frame
    return frame[frame["compared_from"].isna()]


def seed_summary(
    frame: pd.DataFrame, axes: Sequence[str], value: str = "val_acc", scale: float = 100.0
) -> pd.DataFrame:
    """Per setting of `axes`: mean and sample std of `value` (x `scale`) over completed runs, n,
    and how many runs of that setting failed, diverged or have not finished. Records that could
    not be read (status `unreadable`: normlab.reporting.report.collect_results names each) hold no setting
    to group by and are left out; the report's runs line counts them."""
    if "status" in frame:
        frame = frame[frame["status"] != UNREADABLE]
    if frame.empty:
        return pd.DataFrame(columns=[*axes, "mean", "std", *COUNT_COLUMNS])
    keyed = frame.assign(**{axis: frame[axis].map(axis_label) for axis in axes})
    rows = []
    for key, group in keyed.groupby(list(axes), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        done = group[(group["status"] == "completed") & group[value].notna()][value] * scale
        rows.append(
            {
                **dict(zip(axes, key, strict=True)),
                "mean": done.mean() if len(done) else math.nan,
                "std": done.std(ddof=1) if len(done) > 1 else math.nan,
                "n": len(done),
                "failed": int((group["status"] == "failed").sum()),
                "diverged": int((group["status"] == "diverged").sum()),
                "unfinished": int((~group["status"].isin(["completed", *FINISHED_BAD])).sum()),
            }
        )
    summary = pd.DataFrame(rows)
    return summary.sort_values(list(axes), key=_natural_order).reset_index(drop=True)


def format_cell(mean: float, std: float, n: int, **counts: int) -> str:
    """'71.3 ± 0.4 (n=3)', with failed/diverged/unfinished runs named beside; '—' when none
    completed."""
    if n == 0:
        text = "—"
    elif math.isnan(std):
        text = f"{mean:.2f} (n={n})"
    else:
        text = f"{mean:.2f} ± {std:.2f} (n={n})"
    extra = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    return f"{text} [{extra}]" if extra else text


def axis_label(value: Any) -> str:
    """A run axis value as the text a table shows: 2 and 2.0 print alike, None as 'null'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _natural_order(column: pd.Series) -> pd.Series:
    """Sort numbers as numbers and text as text within one column."""
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric if numeric.notna().all() else column.astype(str)
