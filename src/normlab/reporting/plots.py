"""The report's figures, drawn from a sweep's rows (one per run, results.json fields).

Every figure averages completed seeds only and draws their spread (sample std) as error bars
or bands; failed, diverged and unfinished runs are left out of the curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from normlab.reporting.aggregate import axis_label, seed_summary  # noqa: E402

DIAGNOSTIC_METRICS = ("collapse_ratio", "instance_ratio", "act_std")


def series_name(key: tuple[str, ...], axes: Sequence[str]) -> str:
    """'gn' or 'bn, precise_bn_samples=1000': the legend entry of one series."""
    parts = [key[0], *(f"{a}={v}" for a, v in zip(axes[1:], key[1:], strict=True))]
    return ", ".join(parts)


def _completed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "completed"]


def plot_accuracy_vs_batch(
    frame: pd.DataFrame, path: Path, series: Sequence[str], value: str = "val_acc"
) -> Path:
    """Accuracy vs per-device batch (log scale), one line per series with seed error bars: the
    GN paper's Figure 5 shape. A sweep with one batch size gets one point per series."""
    summary = seed_summary(frame, [*series, "batch_size"], value)
    summary = summary[summary["n"] > 0]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, rows in summary.groupby(list(series), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        x = pd.to_numeric(rows["batch_size"], errors="coerce")
        ax.errorbar(
            x, rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3,
            label=series_name(key, series),
        )  # fmt: skip
    ax.set_xscale("log", base=2)
    ticks = sorted(pd.to_numeric(summary["batch_size"], errors="coerce").dropna().unique())
    ax.set_xticks(ticks, [axis_label(t) for t in ticks])
    ax.set_xlabel("batch size per device")
    ax.set_ylabel("final val accuracy (%)")
    _finish(fig, ax, path)
    return path


def epoch_curves(frame: pd.DataFrame, series: Sequence[str], key: str = "val/acc") -> pd.DataFrame:
    """Per series and epoch: mean and std (in %) of `key` over completed seeds' histories."""
    rows = []
    for _, run in _completed(frame).iterrows():
        history = run.get("history")
        if not isinstance(history, list):
            continue
        for entry in history:
            if entry.get(key) is not None:
                rows.append(
                    {
                        **{a: axis_label(run[a]) for a in series},
                        "epoch": entry["epoch"],
                        key: entry[key],
                    }
                )
    if not rows:
        return pd.DataFrame(columns=[*series, "epoch", "mean", "std", "n"])
    table = pd.DataFrame(rows).groupby([*series, "epoch"], sort=False)[key]
    curves = table.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    curves[["mean", "std"]] *= 100
    return curves


def plot_accuracy_by_epoch(
    frame: pd.DataFrame, path: Path, series: Sequence[str], panel: str = "batch_size"
) -> Path:
    """Validation accuracy after every epoch, one line per series with a seed band: how EMA and
    PreciseBN statistics track the model during training (Rethinking BN, Sec. 3). Where the
    sweep varies `panel` beside other axes, one panel per value of it (the paper's figures, one
    per batch size), each series in the same colour in every panel."""
    curves = epoch_curves(frame, series)
    faceted = len(series) > 1 and panel in series and curves[panel].nunique() > 1
    lines = [a for a in series if a != panel] if faceted else list(series)
    values = _natural_sorted(curves[panel].unique()) if faceted else [None]
    keys = list(dict.fromkeys(curves[lines].itertuples(index=False, name=None)))
    colours = {key: f"C{i % 10}" for i, key in enumerate(keys)}
    fig, axes = plt.subplots(
        1, len(values), figsize=(1.5 + 4.0 * len(values), 3.8), sharey=True, squeeze=False
    )
    for ax, value in zip(axes[0], values, strict=True):
        shown = curves if value is None else curves[curves[panel] == value]
        for key, rows in shown.groupby(lines, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            epochs = rows["epoch"].to_numpy() + 1
            mean, std = rows["mean"].to_numpy(), rows["std"].fillna(0).to_numpy()
            colour = colours[key]
            ax.plot(epochs, mean, marker=".", color=colour, label=series_name(key, lines))
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if value is not None:
            ax.set_title(f"{panel} = {value}", fontsize=9)
    axes[0][0].set_ylabel("val accuracy (%)")
    if keys:  # runs without a history (not finished, or from before it was kept) draw nothing
        # every series once, in its colour, though a panel may lack some (BN only at 32)
        handles = [
            Line2D([], [], color=colours[key], marker=".", label=series_name(key, lines))
            for key in keys
        ]
        axes[0][0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _natural_sorted(values: Sequence[str]) -> list[str]:
    """Axis labels in numeric order where they are numbers, else in text order."""
    numbers = pd.to_numeric(pd.Series(list(values)), errors="coerce")
    if numbers.notna().all():
        return [v for _, v in sorted(zip(numbers, values, strict=True))]
    return sorted(values)


def plot_diagnostics_by_depth(
    frame: pd.DataFrame,
    path: Path,
    series: Sequence[str],
    metrics: Sequence[str] = DIAGNOSTIC_METRICS,
) -> Path | None:
    """The failure-mode diagnostics against depth (Proxy Norm Fig. 2, Bjorck et al.'s activation
    growth), mean over completed seeds; None when no run measured them."""
    done = _completed(frame)
    has = (
        done["diagnostics"].apply(lambda d: isinstance(d, dict) and bool(d))
        if "diagnostics" in done
        else []
    )
    measured = done[has] if len(has) else done.iloc[0:0]
    if measured.empty:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for key, runs in measured.groupby(
            [measured[a].map(axis_label) for a in series], sort=False
        ):
            key = key if isinstance(key, tuple) else (key,)
            profiles = [r[metric] for r in runs["diagnostics"] if isinstance(r.get(metric), list)]
            if not profiles:
                continue
            depth = min(len(p) for p in profiles)
            values = np.array(
                [[np.nan if v is None else v for v in p[:depth]] for p in profiles], dtype=float
            )
            ax.plot(range(1, depth + 1), np.nanmean(values, axis=0), label=series_name(key, series))
        ax.set_title(metric)
        ax.set_xlabel("depth (norm layer)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(fig: plt.Figure, ax: plt.Axes, path: Path) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing completed yet: an empty figure, no legend
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
