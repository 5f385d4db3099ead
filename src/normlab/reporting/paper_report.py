"""A sweep as the paper's table: one row per setting of the swept axes with mean ± std over
seeds, the paper's published number beside it, whether each ordering the paper claims holds,
and the figures. Written as Markdown and CSV by `scripts/report.py` and used by the notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from normlab.reporting.aggregate import (
    COUNT_COLUMNS,
    axis_label,
    flatten_norm_params,
    format_cell,
    own_runs,
    seed_summary,
)
from normlab.reporting.papers import PublishedRow, Verdict, check_claims, papers, published_rows
from normlab.reporting.plots import (
    plot_accuracy_by_epoch,
    plot_accuracy_vs_batch,
    plot_diagnostics_by_depth,
)

# Run axes a sweep may vary, in table order, with the names a reader knows them by.
AXIS_NAMES = {
    "norm": "norm",
    "norm.groups": "groups",
    "norm.group_size": "channels per group",
    "norm.ghost_batch_size": "ghost batch",
    "batch_size": "batch per device",
    "virtual_devices": "devices (virtual)",
    "momentum": "EMA momentum",
    "precise_bn_samples": "PreciseBN samples",
    "frozen_bn_last_epochs": "FrozenBN last epochs",
    "eval_stats": "eval statistics",
    "eval_alpha": "eval alpha",
    "norm_weight_decay": "γ/β decay",
    "base_lr": "lr (optim.lr)",
    "lr": "lr (scaled)",
    "max_epochs": "epochs (budget)",
    "model": "model",
    "data": "data",
    "precision": "precision",
    "memory_format": "memory format",
}


@dataclass
class SweepReport:
    """Everything a sweep's report shows; `frame` has one row per run."""

    frame: pd.DataFrame
    axes: list[str]
    summary: pd.DataFrame
    preset: str | None
    published: list[PublishedRow] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)


def with_epoch_budget(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with max_epochs filled, for records written before it was, from the epochs a
    completed run trained (its budget); other runs' budgets stay unknown."""
    if "epochs" not in frame or "status" not in frame:
        return frame
    frame = frame.copy()
    budget = frame["max_epochs"] if "max_epochs" in frame else pd.Series(None, index=frame.index)
    trained = frame["epochs"].where(frame["status"] == "completed")
    frame["max_epochs"] = budget.where(budget.notna(), trained)
    return frame


def swept_axes(frame: pd.DataFrame) -> list[str]:
    """The run axes whose value differs between runs (the seed aside), in table order; `norm`
    always, so a one-norm sweep still names its method. The scaled lr is an axis only where it
    differs between runs of one global batch and optim.lr (another optim.ref_batch_size): it
    follows from those otherwise. A norm's own parameters (its momentum, norm.<param>) are axes
    only where they differ between runs of one norm, not merely between norms with different
    defaults (BRN's momentum 0.01 against BN's 0.1)."""
    axes = []
    for axis in AXIS_NAMES:
        if axis not in frame:
            continue
        # A run that has not finished may lack the axes written at its end: only values decide.
        values = frame[axis].map(axis_label).where(frame[axis].notna())
        if axis in ("momentum",) or axis.startswith("norm."):
            varies = (values.groupby(frame["norm"]).nunique() > 1).any()
        elif axis == "lr" and {"global_batch_size", "base_lr"} <= set(frame):
            keys = [frame["global_batch_size"].astype(str), frame["base_lr"].astype(str)]
            varies = (values.groupby(keys).nunique() > 1).any()
        else:
            varies = values.dropna().nunique() > 1
        if axis == "norm" or varies:
            axes.append(axis)
    return axes


def build_report(frame: pd.DataFrame, value: str = "val_acc") -> SweepReport:
    """Aggregate a sweep's runs (results.json rows) over seeds and match the paper's numbers."""
    frame = with_epoch_budget(flatten_norm_params(frame))
    axes = swept_axes(frame)
    summary = seed_summary(frame, axes, value)
    presets = sorted({str(p) for p in frame.get("preset", pd.Series(dtype=object)).dropna()})
    preset = presets[0] if len(presets) == 1 else None
    published = published_rows(preset) if preset else []
    verdicts = check_claims(frame, preset) if preset else []
    return SweepReport(frame, axes, summary, preset, published, verdicts)


def paper_value(report: SweepReport, row: pd.Series) -> PublishedRow | None:
    """The published number for one table row: every key of the paper's row equals the row's
    value of that axis, or the sweep's single value where the sweep did not vary it."""
    for published in report.published:
        if all(
            _value_of(report, row, key) == axis_label(want) for key, want in published.keys.items()
        ):
            return published
    return None


def _value_of(report: SweepReport, row: pd.Series, key: str) -> str | None:
    if key in report.axes:
        return str(row[key])
    if key not in report.frame:
        return None
    values = report.frame[key].map(axis_label).unique()
    return str(values[0]) if len(values) == 1 else None


def table(report: SweepReport) -> pd.DataFrame:
    """The report table with readable column names: the axes, normlab's result and, for a
    preset, the paper's number (as top-1 accuracy) and where it comes from."""
    rows = []
    for _, row in report.summary.iterrows():
        counts = {k: int(row[k]) for k in COUNT_COLUMNS[1:]}
        entry = {AXIS_NAMES[a]: row[a] for a in report.axes}
        entry["val acc % (normlab)"] = format_cell(row["mean"], row["std"], int(row["n"]), **counts)
        if report.preset:
            published = paper_value(report, row)
            entry["top-1 % (paper)"] = f"{published.accuracy:.1f}" if published else ""
            entry["paper source"] = f"{published.paper}: {published.source}" if published else ""
        rows.append(entry)
    frame = pd.DataFrame(rows)
    if report.preset and not frame.empty and not frame["top-1 % (paper)"].astype(bool).any():
        frame = frame.drop(columns=["top-1 % (paper)", "paper source"])  # no number published
    return frame


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def markdown(report: SweepReport, figures: dict[str, Path], folder: Path) -> str:
    """The whole report as Markdown: counts, table, the paper's claims, figures."""
    runs = own_runs(report.frame)
    counts = runs["status"].value_counts()
    compared = len(report.frame) - len(runs)
    lines = [
        f"runs: {len(runs)} ("
        + ", ".join(f"{int(n)} {s}" for s, n in counts.items())
        + ")"
        + (
            f", and {compared} PreciseBN evaluations compared within them (the rows with "
            "PreciseBN samples: the same weights as the run's EMA row)"
            if compared
            else ""
        )
        + "; mean ± sample std over completed seeds, n = completed seeds; failed, diverged and "
        "unfinished runs are counted in brackets, never averaged in",
        "",
        markdown_table(table(report)),
    ]
    if report.preset:
        lines += ["", *paper_section(report)]
    for name, path in figures.items():
        lines += ["", f"![{name}]({path.relative_to(folder)})"]
    return "\n".join(lines) + "\n"


def paper_section(report: SweepReport) -> list[str]:
    """The paper's settings and each ordering it claims, with normlab's verdict."""
    cited = {p.paper for p in report.published} | {v.claim.paper for v in report.verdicts}
    lines = [f"Preset `{report.preset}`. " + ("Papers:" if cited else "No paper numbers.")]
    for key in sorted(cited):
        paper = papers()[key]
        lines.append(f"- {paper['authors']}, {paper['title']}, {paper['venue']} ({paper['url']})")
    settings = sorted(
        {(p.paper, p.source, p.setting, p.metric, p.evidence) for p in report.published}
    )
    for paper, source, setting, metric, evidence in settings:
        lines.append(f"- paper numbers, {paper} {source}: {setting}; {metric} [{evidence}]")
    if report.verdicts:
        lines += [
            "",
            "| the paper claims | source | normlab | measured |",
            "| --- | --- | --- | --- |",
        ]
        for verdict in report.verdicts:
            noise = " (within the seeds' spread)" if verdict.within_noise else ""
            recipe = f" [{verdict.recipe}]" if verdict.recipe else ""
            lines.append(
                f"| {verdict.claim.statement}{recipe} | {verdict.claim.paper}: {verdict.claim.source} | "
                f"{verdict.outcome}{noise} | {verdict.detail} |"
            )
    return lines


def draw_figures(report: SweepReport, folder: Path) -> dict[str, Path]:
    """The figures that apply to this sweep, as PNGs in `folder`."""
    series = [a for a in report.axes if a != "batch_size"] or ["norm"]
    figures = {}
    if "batch_size" in report.frame and (report.frame["status"] == "completed").any():
        figures["accuracy vs batch per device"] = plot_accuracy_vs_batch(
            report.frame, folder / "accuracy_vs_batch.png", series
        )
        figures["accuracy after every epoch"] = plot_accuracy_by_epoch(
            report.frame, folder / "accuracy_by_epoch.png", report.axes
        )
    depth = plot_diagnostics_by_depth(
        report.frame, folder / "diagnostics_by_depth.png", report.axes
    )
    if depth is not None:
        figures["diagnostics by depth"] = depth
    return figures


def write_paper_report(frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """report.md, summary.csv and the figures in `folder`; returns their paths."""
    report = build_report(frame)
    figures = draw_figures(report, folder)
    outputs = {"markdown": folder / "report.md", "summary": folder / "summary.csv"}
    table(report).to_csv(outputs["summary"], index=False)
    outputs["markdown"].write_text(markdown(report, figures, folder))
    return {**outputs, **figures}
