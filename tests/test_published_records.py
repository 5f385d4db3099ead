"""Sweeps that outlive a machine: a preset's sweep run on a fresh clone skips the jobs whose
exact settings the committed run records (docs/results/runs/<preset>.jsonl) already hold."""

from __future__ import annotations

import json
from pathlib import Path

from normlab.reporting.run_records import export_records
from tests.helpers import REPO_ROOT, Shrink, run_train


def _read(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_a_fresh_sweep_runs_only_the_jobs_the_records_lack(tmp_path: Path, shrink: Shrink) -> None:
    records = tmp_path / "records"
    tiny = shrink("logger=none", "threads=1", "preset=tiny")
    first = run_train(["-m", *tiny, "seed=0", f"published_records={records}"], tmp_path / "a")
    assert first.returncode == 0, first.stderr[-2000:]
    export_records(tmp_path / "a" / "sweep", records / "tiny.jsonl", REPO_ROOT)
    published = [json.loads(line) for line in (records / "tiny.jsonl").read_text().splitlines()]
    assert all(len(record["fingerprint"]) == 64 for record in published)

    # A fresh machine (no sweep folder) extends the comparison with seed 1: only it runs.
    fresh = run_train(["-m", *tiny, "seed=0,1", f"published_records={records}"], tmp_path / "b")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.count("normlab: skipped, already published: ") == 1
    assert (
        "2 jobs: 2 completed, 0 failed, 0 diverged; 1 launched, 1 skipped as already finished"
        in fresh.stdout
    )
    sweep = tmp_path / "b" / "sweep"
    copied = _read(sweep / "0")
    assert copied["published_from"] == f"{records / 'tiny.jsonl'}:1"
    assert copied["val_acc"] == published[0]["val_acc"]
    assert copied["fingerprint"] == published[0]["fingerprint"]
    assert (sweep / "0" / "fingerprint.json").is_file()
    assert "published_from" not in _read(sweep / "1")
    assert _read(sweep / "1")["seed"] == 1

    # Other settings are never taken from a record: another lr runs.
    other = run_train(
        ["-m", *tiny, "seed=0", "optim.lr=0.05", f"published_records={records}"], tmp_path / "c"
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert "1 launched, 0 skipped" in other.stdout
    assert _read(tmp_path / "c" / "sweep" / "0")["fingerprint"] != published[0]["fingerprint"]
