"""The papers' published numbers and claimed orderings (published.yaml), and whether a sweep
agrees with them.

Claims are checked on the mean over completed seeds of the final validation accuracy. A claim
whose rows were not run, or have no completed seed, is 'not measured'; one whose difference is
smaller than the seeds' spread says so, since the order could flip with more seeds. Runs of
different recipes (precision, memory layout, epoch budget, model, data) are never compared
with each other: where a sweep holds several, each claim is checked within each recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import pandas as pd
import yaml

from normlab.reporting.aggregate import axis_label

# The run settings that make a recipe rather than a method's setting: a claim compares runs of
# one recipe only (a float32 run against a bf16 one would mix two effects).
RECIPE_AXES = ("precision", "memory_format", "max_epochs", "model", "data")
CLAIM_KINDS = ("better", "not_worse", "order", "less_spread", "close", "diverges", "wider_gap")
Selector = dict[str, Any]


@dataclass(frozen=True)
class PublishedRow:
    """One published number: the row it belongs to (run axes) and the paper's value."""

    preset: str
    paper: str
    source: str
    setting: str
    metric: str
    evidence: str
    keys: Selector
    value: float

    @property
    def accuracy(self) -> float:
        """The value as top-1 accuracy in %, so it can stand beside normlab's accuracy."""
        return 100.0 - self.value if self.metric == "top1_error" else self.value


@dataclass(frozen=True)
class Claim:
    """An ordering a paper states, in terms of rows of a sweep (see published.yaml)."""

    preset: str
    paper: str
    source: str
    statement: str
    kind: str
    a: Selector = field(default_factory=dict)
    b: Selector = field(default_factory=dict)
    rows: tuple[Selector, ...] = ()
    axis: str = ""
    tolerance: float = 0.0
    value: str = "val_acc"
    b_value: str = ""


@dataclass(frozen=True)
class Verdict:
    """Whether a sweep agrees with a claim: 'agrees', 'disagrees' or 'not measured'."""

    claim: Claim
    outcome: str
    detail: str
    within_noise: bool = False
    recipe: str = ""  # 'precision bf16-mixed' where the sweep holds runs of several recipes


@cache
def _data() -> dict[str, Any]:
    text = resources.files("normlab.reporting.papers").joinpath("published.yaml").read_text()
    return yaml.safe_load(text)


def papers() -> dict[str, dict[str, str]]:
    """Paper id -> title, authors, venue, url."""
    return dict(_data()["papers"])


def published_rows(preset: str) -> list[PublishedRow]:
    """Every published number for `preset`."""
    rows = []
    for entry in _data()["numbers"]:
        if entry["preset"] != preset:
            continue
        meta = {k: entry[k] for k in ("preset", "paper", "source", "setting", "metric", "evidence")}
        for row in entry["rows"]:
            keys = {k: v for k, v in row.items() if k != "value"}
            rows.append(PublishedRow(**meta, keys=keys, value=float(row["value"])))
    return rows


def claims(preset: str) -> list[Claim]:
    """Every claimed ordering for `preset`."""
    found = []
    for entry in _data()["claims"]:
        if entry["preset"] != preset:
            continue
        if entry["kind"] not in CLAIM_KINDS:
            raise ValueError(f"published.yaml: unknown claim kind {entry['kind']!r}")
        found.append(Claim(**{**entry, "rows": tuple(entry.get("rows", ()))}))
    return found


def matches(frame: pd.DataFrame, selector: Selector) -> pd.Series:
    """Rows of `frame` whose axes equal the selector's values ('!x': differ from x). A selector
    key the sweep lacks matches nothing."""
    mask = pd.Series(True, index=frame.index)
    for key, wanted in selector.items():
        if key not in frame:
            return pd.Series(False, index=frame.index)
        labels = frame[key].map(axis_label)
        text = str(wanted)
        if text.startswith("!"):
            mask &= labels != axis_label(_number(text[1:]))
        else:
            mask &= labels == axis_label(_number(wanted))
    return mask


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _stats(frame: pd.DataFrame, selector: Selector, value: str) -> tuple[float, float, int]:
    """(mean, std, n) of `value` in % over the completed runs the selector picks."""
    rows = frame[matches(frame, selector) & (frame["status"] == "completed")]
    values = pd.to_numeric(rows[value], errors="coerce").dropna() * 100 if value in rows else []
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if n > 1 else 0.0, n


def check_claim(frame: pd.DataFrame, claim: Claim) -> Verdict:
    """Whether the completed runs of `frame` agree with `claim`."""
    if claim.kind == "diverges":
        picked = frame[matches(frame, claim.a)]
        finished = picked[picked["status"].isin(["completed", "diverged", "failed"])]
        if finished.empty:
            return Verdict(claim, "not measured", "no finished run")
        diverged = int((finished["status"] == "diverged").sum())
        outcome = "agrees" if diverged == len(finished) else "disagrees"
        return Verdict(claim, outcome, f"{diverged} of {len(finished)} runs diverged")
    if claim.kind == "less_spread":
        return _check_spread(frame, claim)
    if claim.kind == "wider_gap":
        return _check_gap(frame, claim)
    if claim.kind == "order":
        stats = [_stats(frame, row, claim.value) for row in claim.rows]
        if any(n == 0 for _, _, n in stats):
            return Verdict(claim, "not measured", "a row has no completed run")
        means = [m for m, _, _ in stats]
        ok = all(x > y for x, y in zip(means, means[1:], strict=False))
        gaps = [x - y for x, y in zip(means, means[1:], strict=False)]
        noise = any(
            abs(g) <= max(s1, s2)
            for g, (_, s1, _), (_, s2, _) in zip(gaps, stats, stats[1:], strict=False)
        )
        detail = " > ".join(f"{m:.2f}" for m in means)
        return Verdict(claim, "agrees" if ok else "disagrees", detail, noise)
    mean_a, std_a, n_a = _stats(frame, claim.a, claim.value)
    mean_b, std_b, n_b = _stats(frame, claim.b, claim.b_value or claim.value)
    if n_a == 0 or n_b == 0:
        return Verdict(claim, "not measured", f"completed runs: a {n_a}, b {n_b}")
    gap = mean_a - mean_b
    ok = {
        "better": gap > 0,
        "not_worse": gap >= -claim.tolerance,
        "close": abs(gap) <= claim.tolerance,
    }[claim.kind]
    detail = f"{mean_a:.2f} vs {mean_b:.2f} (difference {gap:+.2f}; n {n_a}/{n_b})"
    return Verdict(claim, "agrees" if ok else "disagrees", detail, abs(gap) <= max(std_a, std_b))


def _check_spread(frame: pd.DataFrame, claim: Claim) -> Verdict:
    spreads = []
    for selector in (claim.a, claim.b):
        rows = frame[matches(frame, selector) & (frame["status"] == "completed")]
        if claim.axis not in rows or rows.empty:
            return Verdict(claim, "not measured", "no completed run")
        means = rows.groupby(rows[claim.axis].map(axis_label))[claim.value].mean() * 100
        if len(means) < 2:
            return Verdict(claim, "not measured", f"fewer than two values of {claim.axis}")
        spreads.append(float(means.max() - means.min()))
    ok = spreads[0] < spreads[1]
    detail = f"range over {claim.axis}: {spreads[0]:.2f} vs {spreads[1]:.2f} points"
    return Verdict(claim, "agrees" if ok else "disagrees", detail)


def _check_gap(frame: pd.DataFrame, claim: Claim) -> Verdict:
    """a - b where rows[0] holds, against a - b where rows[1] holds."""
    gaps = []
    for where in claim.rows:
        mean_a, std_a, n_a = _stats(frame, {**claim.a, **where}, claim.value)
        mean_b, std_b, n_b = _stats(frame, {**claim.b, **where}, claim.value)
        if n_a == 0 or n_b == 0:
            return Verdict(claim, "not measured", f"completed runs where {where}: a {n_a}, b {n_b}")
        gaps.append((mean_a - mean_b, max(std_a, std_b)))
    (wide, noise_wide), (narrow, noise_narrow) = gaps
    labels = [", ".join(f"{k} {axis_label(v)}" for k, v in where.items()) for where in claim.rows]
    detail = f"difference {wide:+.2f} at {labels[0]} vs {narrow:+.2f} at {labels[1]}"
    outcome = "agrees" if wide > narrow else "disagrees"
    return Verdict(claim, outcome, detail, abs(wide - narrow) <= max(noise_wide, noise_narrow))


def named_axes(claim: Claim) -> set[str]:
    """The run axes a claim's selectors (and its spread axis) name."""
    named = {claim.axis} if claim.axis else set()
    for selector in (claim.a, claim.b, *claim.rows):
        named |= set(selector)
    return named


def recipes(frame: pd.DataFrame, claim: Claim) -> list[tuple[str, pd.DataFrame]]:
    """The runs of `frame` split by the recipe axes (RECIPE_AXES) that differ between them and
    that `claim` does not name, each part labelled ('precision bf16-mixed'); one unlabelled part
    when every run shares one recipe."""
    named = named_axes(claim)
    varying = [
        axis
        for axis in RECIPE_AXES
        if axis in frame
        and axis not in named
        and frame[axis].dropna().map(axis_label).nunique() > 1
    ]
    if not varying:
        return [("", frame)]
    keys = [frame[axis].map(axis_label).fillna("?") for axis in varying]
    parts = []
    for key, part in frame.groupby(keys, sort=True):
        values = key if isinstance(key, tuple) else (key,)
        parts.append((", ".join(f"{a} {v}" for a, v in zip(varying, values, strict=True)), part))
    return parts


def check_claims(frame: pd.DataFrame, preset: str) -> list[Verdict]:
    """Every claim of `preset`, checked on `frame` (one row per run, results.json fields),
    within each recipe the runs use (recipes)."""
    return [
        replace(check_claim(part, claim), recipe=recipe)
        for claim in claims(preset)
        for recipe, part in recipes(frame, claim)
    ]
