"""A sweep's committed run records (normlab.reporting.run_records) give back the sweep's own report, and
docs/results.md is exactly what `make results` writes from the committed records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from normlab.reporting.report import collect_results, write_report
from normlab.reporting.run_records import (
    add_finished_runs,
    export_records,
    load_records,
    materialize_records,
)
from normlab.results import write_results

REPO = Path(__file__).resolve().parents[1]


def make_sweep(root: Path) -> Path:
    """A small sweep under `root` whose records name paths of `root`, as real runs do."""
    sweep = root / "multirun" / "sweep"
    runs = [
        ("0", "bn", 2, "completed", 0.5),
        ("1", "gn", 2, "completed", 0.6),
        ("b2_0", "ln", 2, "failed", None),
    ]
    for run, norm, batch, status, acc in runs:
        write_results(
            sweep / run,
            {
                "status": status,
                "norm": norm,
                "batch_size": batch,
                "val_acc": acc,
                "seed": 0,
                "history": [{"epoch": 0, "val/acc": acc or 0.0}],
                "output_dir": str(sweep / run),
                "resumed_from": str(sweep / run / "checkpoints" / "last.ckpt"),
            },
        )
    return sweep


@pytest.mark.fast  # in-process: make test-fast
def test_records_hold_no_path_of_the_machine_and_give_back_the_sweep(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    records = tmp_path / "published" / "sweep.jsonl"
    assert export_records(sweep, records, tmp_path) == 3
    text = records.read_text()
    assert str(tmp_path) not in text
    first = load_records(records)[0]
    assert first["run"] == "0" and first["output_dir"] == "multirun/sweep/0"
    assert first["resumed_from"] == "multirun/sweep/0/checkpoints/last.ckpt"

    again = tmp_path / "again"
    assert materialize_records(records, again) == 3
    original = collect_results(sweep).drop(columns=["output_dir", "resumed_from"])
    restored = collect_results(again).drop(columns=["output_dir", "resumed_from"])
    pd.testing.assert_frame_equal(original, restored)
    assert (again / "b2_0" / "results.json").is_file()
    assert write_report(again)["markdown"].read_text().startswith("runs: 3 (2 completed, 1 failed)")


@pytest.mark.fast
def test_bad_records_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run records"):
        load_records(tmp_path / "missing.jsonl")
    no_run = tmp_path / "no_run.jsonl"
    no_run.write_text(json.dumps({"status": "completed"}) + "\n")
    with pytest.raises(ValueError, match="lines \\[1\\] have no 'run'"):
        load_records(no_run)
    escaping = tmp_path / "escaping.jsonl"
    escaping.write_text(json.dumps({"run": "../../elsewhere", "status": "completed"}) + "\n")
    with pytest.raises(ValueError, match="outside the sweep folder"):
        materialize_records(escaping, tmp_path / "sweep")
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"run": "0", "status": "completed", "val_accuracy": 1}) + "\n")
    with pytest.raises(ValueError, match="no field val_accuracy"):
        materialize_records(unknown, tmp_path / "sweep2")


def make_chunk(folder: Path, runs: list[tuple[str, str, str, str]]) -> Path:
    """A sweep folder made on another machine: (job, norm, status, fingerprint) per run."""
    for job, norm, status, digest in runs:
        write_results(
            folder / job,
            {
                "status": status,
                "norm": norm,
                "batch_size": 2,
                "val_acc": 0.7 if status == "completed" else None,
                "seed": 0,
                "fingerprint": digest,
                "history": [{"epoch": 0, "val/acc": 0.7}],
                "output_dir": str(folder / job),
                "resumed_from": str(folder / job / "checkpoints" / "last.ckpt"),
            },
        )
    return folder


@pytest.mark.fast
def test_chunks_made_elsewhere_join_the_published_records(tmp_path: Path) -> None:
    records = tmp_path / "repo" / "published.jsonl"
    make_chunk(tmp_path / "first_machine" / "bn", [("0", "bn", "completed", "a" * 64)])
    first = add_finished_runs(
        records, [tmp_path / "first_machine" / "bn"], "multirun/s", tmp_path / "repo"
    )
    assert first.added == ["bn/0"]
    before = records.read_text()

    chunk = make_chunk(
        tmp_path / "second_machine" / "gn",
        [
            ("0", "gn", "completed", "b" * 64),
            ("1", "gn", "interrupted", "c" * 64),
            ("2", "bn", "completed", "a" * 64),  # the same settings as the published bn/0
            ("3", "ln", "diverged", "d" * 64),
        ],
    )
    added = add_finished_runs(records, [chunk], "multirun/s", tmp_path / "repo")
    assert added.added == ["gn/0", "gn/3"]
    assert added.already_published == ["gn/2"]
    assert added.unfinished == {"gn/1": "interrupted"}
    assert added.summary().startswith("added 2 finished runs, 1 already published, 1 not finished")
    assert records.read_text().startswith(before)  # published lines are kept as they were
    assert str(tmp_path) not in records.read_text()
    gn = load_records(records)[1]
    assert gn["run"] == "gn/0" and gn["output_dir"] == "multirun/s/gn/0"
    assert gn["resumed_from"] == "multirun/s/gn/0/checkpoints/last.ckpt"

    again = add_finished_runs(records, [chunk], "multirun/s", tmp_path / "repo")
    assert again.added == [] and len(load_records(records)) == 3
    sweep = tmp_path / "laid_out"
    assert materialize_records(records, sweep) == 3
    assert (sweep / "gn" / "3" / "results.json").is_file()
    assert (
        write_report(sweep)["markdown"].read_text().startswith("runs: 3 (2 completed, 1 diverged)")
    )


@pytest.mark.fast
def test_chunks_that_cannot_be_told_apart_are_refused(tmp_path: Path) -> None:
    records = tmp_path / "published.jsonl"
    make_chunk(tmp_path / "a" / "chunk", [("0", "bn", "completed", "a" * 64)])
    make_chunk(tmp_path / "b" / "chunk", [("0", "gn", "completed", "b" * 64)])
    with pytest.raises(ValueError, match="folders named chunk more than once"):
        add_finished_runs(
            records, [tmp_path / "a" / "chunk", tmp_path / "b" / "chunk"], "m", tmp_path
        )
    add_finished_runs(records, [tmp_path / "a" / "chunk"], "m", tmp_path)
    with pytest.raises(ValueError, match="run chunk/0 is already published with other settings"):
        add_finished_runs(records, [tmp_path / "b" / "chunk"], "m", tmp_path)
    make_chunk(tmp_path / "old", [("0", "bn", "completed", "")])
    with pytest.raises(ValueError, match="has no fingerprint"):
        add_finished_runs(records, [tmp_path / "old"], "m", tmp_path)
    assert len(load_records(records)) == 1


def test_docs_results_is_what_make_results_writes_from_the_committed_records(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.md"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert out.read_text() == (REPO / "docs" / "results.md").read_text()
    for figure in (REPO / "docs" / "results").glob("*/*.png"):
        assert (tmp_path / "results" / figure.parent.name / figure.name).is_file(), figure


def test_publish_names_the_sections(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "results.py"), "--publish", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    names = sorted(path.stem for path in (REPO / "docs/results/runs").glob("*.yaml"))
    assert "no section nope; choose from " in done.stderr
    listed = done.stderr.split("choose from ")[1].strip().split(", ")
    assert sorted(listed) == names and "gn_batch_size" in listed


def test_runs_are_added_to_exactly_one_named_section(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO / "scripts" / "results.py")]
    alone = subprocess.run([*script, "--runs", str(tmp_path)], capture_output=True, text=True)
    assert alone.returncode == 1 and "--runs needs --publish NAME" in alone.stderr
    two = subprocess.run(
        [*script, "--publish", "gn_batch_size", "bn_baseline", "--runs", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert two.returncode == 1 and "give exactly one --publish NAME" in two.stderr
    missing = subprocess.run(
        [*script, "--publish", "gn_batch_size", "--runs", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "--runs: no folder" in missing.stderr
