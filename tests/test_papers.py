"""Published numbers load, and claims are judged on completed seeds only."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from normlab.reporting.aggregate import flatten_norm_params, format_cell, seed_summary
from normlab.reporting.papers import (
    CLAIM_KINDS,
    check_claim,
    check_claims,
    claims,
    papers,
    published_rows,
)

pytestmark = pytest.mark.fast  # in-process: make test-fast


def runs(rows: list[tuple[str, int, int, str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"norm": n, "batch_size": b, "seed": s, "status": st, "val_acc": acc}
            for n, b, s, st, acc in rows
        ]
    )


def test_published_numbers_of_the_gn_paper_table_2() -> None:
    rows = {(r.keys["norm"], r.keys.get("batch_size")): r for r in published_rows("gn_batch_size")}
    assert rows[("bn", 2)].value == 34.7 and rows[("gn", 2)].value == 24.1
    assert rows[("bn", 32)].accuracy == pytest.approx(76.4)
    assert rows[("bn", 2)].source == "Table 2" and rows[("bn", 2)].evidence == "PAPER-TEXT"
    assert all(
        c.paper in papers() for preset in ("gn_batch_size", "small_batch") for c in claims(preset)
    )
    assert {c.kind for p in ("gn_batch_size", "understanding_bn") for c in claims(p)} <= set(
        CLAIM_KINDS
    )


def test_seed_summary_averages_completed_runs_and_counts_the_rest_beside() -> None:
    frame = runs(
        [
            ("bn", 2, 0, "completed", 0.61),
            ("bn", 2, 1, "completed", 0.65),
            ("bn", 2, 2, "diverged", 0.26),  # not averaged: the old report printed 50.67
            ("bn", 2, 3, "running", None),
            ("gn", 2, 0, "failed", None),
        ]
    )
    summary = seed_summary(frame, ["norm", "batch_size"]).set_index("norm")
    assert summary.loc["bn", "mean"] == pytest.approx(63.0)
    assert summary.loc["bn", "std"] == pytest.approx(math.sqrt(8.0))
    assert (
        summary.loc["bn", "n"],
        summary.loc["bn", "diverged"],
        summary.loc["bn", "unfinished"],
    ) == (2, 1, 1)
    assert summary.loc["gn", "n"] == 0 and summary.loc["gn", "failed"] == 1
    assert format_cell(63.0, 2.83, 2, diverged=1) == "63.00 ± 2.83 (n=2) [diverged 1]"
    assert format_cell(math.nan, math.nan, 0, failed=1) == "— [failed 1]"


def test_norm_parameters_become_axes() -> None:
    frame = pd.DataFrame(
        [{"norm": "gn", "norm_params": {"groups": 4}}, {"norm": "bn", "norm_params": {}}]
    )
    flat = flatten_norm_params(frame)
    assert flat["norm.groups"].tolist()[0] == 4 and flat["norm.groups"].isna().tolist()[1]


def test_claims_agree_disagree_or_are_not_measured() -> None:
    frame = runs(
        [
            ("bn", 2, 0, "completed", 0.30),
            ("bn", 2, 1, "completed", 0.34),
            ("gn", 2, 0, "completed", 0.70),
            ("gn", 2, 1, "completed", 0.72),
            ("bn", 32, 0, "completed", 0.80),
            ("gn", 32, 0, "completed", 0.85),  # GN beats BN at 32: disagrees with Table 2
            ("gn", 32, 1, "diverged", None),
        ]
    )
    verdicts = {v.claim.statement: v for v in check_claims(frame, "gn_batch_size")}
    assert verdicts["GN is better than BN at a per-device batch of 2"].outcome == "agrees"
    assert verdicts["BN is better than GN at a per-device batch of 32"].outcome == "disagrees"
    assert verdicts["GN varies less with the per-device batch than BN"].outcome == "agrees"
    assert verdicts["At 32 per device: BN > GN > LN > IN"].outcome == "not measured"
    assert "difference +39.00" in verdicts["GN is better than BN at a per-device batch of 2"].detail


def test_claims_never_compare_runs_of_two_recipes() -> None:
    frame = runs(
        [
            ("bn", 32, 0, "completed", 0.867),
            ("bn", 2, 0, "completed", 0.838),
            ("bn", 2, 1, "completed", 0.80),
        ]
    ).assign(precision=["bf16-mixed", "32-true", "bf16-mixed"])
    statement = "BN at a per-device batch of 32 is better than BN at 2"
    verdicts = [v for v in check_claims(frame, "gn_batch_size") if v.claim.statement == statement]
    by_recipe = {v.recipe: v for v in verdicts}
    assert set(by_recipe) == {"precision 32-true", "precision bf16-mixed"}
    assert by_recipe["precision 32-true"].outcome == "not measured"  # no float32 run at 32
    assert by_recipe["precision bf16-mixed"].detail.startswith("86.70 vs 80.00")
    one_recipe = frame.assign(precision="bf16-mixed")
    (alone,) = [
        v for v in check_claims(one_recipe, "gn_batch_size") if v.claim.statement == statement
    ]
    assert alone.recipe == "" and alone.detail.startswith("86.70 vs 81.90")


def test_divergence_claim_and_negated_selector() -> None:
    frame = pd.DataFrame(
        [
            {"norm": "none", "base_lr": 0.1, "status": "diverged", "val_acc": None},
            {"norm": "none", "base_lr": 0.1, "status": "diverged", "val_acc": None},
            {"norm": "bn", "base_lr": 0.1, "status": "completed", "val_acc": 0.9},
            {"norm": "bn", "base_lr": 0.0001, "status": "completed", "val_acc": 0.5},
            {"norm": "none", "base_lr": 0.0001, "status": "completed", "val_acc": 0.52},
        ]
    )
    verdicts = [v.outcome for v in check_claims(frame, "understanding_bn")]
    assert verdicts == ["agrees", "agrees", "agrees"]
    precise = next(c for c in claims("rethinking_ema"))
    frame = pd.DataFrame(
        [
            {"norm": "bn", "precise_bn_samples": 0, "status": "completed", "val_acc": 0.6},
            {"norm": "bn", "precise_bn_samples": 1000, "status": "completed", "val_acc": 0.58},
        ]
    )
    verdict = check_claim(frame, precise)
    assert verdict.outcome == "disagrees" and "58.00 vs 60.00" in verdict.detail


def test_rethinking_ema_claims_compare_the_ema_gap_across_batch_sizes() -> None:
    def run(batch: int, samples: int, seed: int, acc: float) -> dict:
        return {
            "norm": "bn",
            "batch_size": batch,
            "precise_bn_samples": samples,
            "momentum": 0.01,
            "seed": seed,
            "status": "completed",
            "val_acc": acc,
        }

    frame = pd.DataFrame(
        [
            run(256, 0, 0, 0.20),
            run(256, 0, 1, 0.22),
            run(256, 1000, 0, 0.38),
            run(256, 10000, 0, 0.42),
            run(32, 0, 0, 0.50),
            run(32, 1000, 0, 0.52),
            run(32, 10000, 0, 0.52),
        ]
    )
    verdicts = check_claims(frame, "rethinking_ema")
    gap = next(v for v in verdicts if v.claim.kind == "wider_gap")
    assert gap.outcome == "agrees"
    assert gap.detail == "difference +19.00 at batch_size 256 vs +2.00 at batch_size 32"
    close = next(v for v in verdicts if v.claim.kind == "close")  # 10^3 vs 10^4 samples: 45 vs 47
    assert close.outcome == "disagrees" and "difference -2.00" in close.detail
    large = next(v for v in verdicts if "large batch" in v.claim.statement)
    assert large.outcome == "agrees" and "40.00 vs 21.00" in large.detail
    faster = check_claim(frame.assign(momentum=0.1), large.claim)
    assert faster.outcome == "not measured"  # the claim is about the slow EMA
    # the gap inverted: PreciseBN helps more at 32 than at 256
    flipped = frame.assign(val_acc=[0.40, 0.40, 0.41, 0.41, 0.30, 0.50, 0.50])
    assert check_claim(flipped, gap.claim).outcome == "disagrees"
    assert check_claim(frame[frame["batch_size"] == 32], gap.claim).outcome == "not measured"
