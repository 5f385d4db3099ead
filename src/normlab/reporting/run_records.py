"""A sweep's run records as one committed file: the results.json of every job, one per line.

Sweep folders hold checkpoints and logs and are never committed, so a published comparison
would be lost with the machine that ran it. `export_records` keeps what reports read (each
job's results.json) in a JSON Lines file, with every path made relative to the project;
`materialize_records` writes them back as a folder of results.json files, which the sweep
report (normlab.reporting.report.write_report) reads like the sweep folder itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from normlab.results import RESULTS_FILE, write_results
from normlab.run_folder import FINISHED

RUN_KEY = "run"  # the job's folder below the sweep folder, e.g. "3" or "b2_7"


def _relative_paths(value: Any, root: str) -> Any:
    """`value` with every string that names a path under `root` made relative to it, so a
    record carries no path of the machine that made it."""
    if isinstance(value, str):
        return value.replace(root + "/", "").replace(root, ".")
    if isinstance(value, list):
        return [_relative_paths(item, root) for item in value]
    if isinstance(value, dict):
        return {key: _relative_paths(item, root) for key, item in value.items()}
    return value


def read_sweep(sweep: Path) -> list[dict[str, Any]]:
    """Every job's results.json below `sweep`, each with its job folder under RUN_KEY, in
    folder order. Raises FileNotFoundError when the folder holds none."""
    records = []
    for path in sorted(Path(sweep).rglob(RESULTS_FILE)):
        record = json.loads(path.read_text())
        record[RUN_KEY] = str(path.parent.relative_to(sweep))
        records.append(record)
    if not records:
        raise FileNotFoundError(f"no {RESULTS_FILE} below {sweep}")
    return records


def export_records(sweep: Path, out: Path, root: Path) -> int:
    """Write the run records of `sweep` to `out` (JSON Lines), paths relative to `root`;
    returns how many runs it holds."""
    records = _relative_paths(read_sweep(sweep), str(Path(root).resolve()))
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record, sort_keys=True) for record in records]
    out.write_text("\n".join(lines) + "\n")
    return len(records)


def load_records(path: Path) -> list[dict[str, Any]]:
    """The run records of a JSON Lines file written by export_records."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no run records at {path}")
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    missing = [i + 1 for i, record in enumerate(records) if RUN_KEY not in record]
    if missing:
        raise ValueError(f"{path}: lines {missing} have no '{RUN_KEY}' (the job folder)")
    return records


def materialize_records(path: Path, folder: Path) -> int:
    """Write the records of `path` into `folder` as <run>/results.json, the layout of the sweep
    they came from; returns how many."""
    records = load_records(path)
    for record in records:
        run = record.pop(RUN_KEY)
        target = (Path(folder) / run).resolve()
        if not target.is_relative_to(Path(folder).resolve()):
            raise ValueError(f"{path}: run folder '{run}' lies outside the sweep folder")
        write_results(target, record)
    return len(records)


def published_record(path: Path, digest: str) -> tuple[int, dict[str, Any]] | None:
    """(line number, record) of the first finished run (completed or diverged) in the records
    file `path` whose settings have the fingerprint `digest`; None when none has (or no file)."""
    if not Path(path).is_file():
        return None
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("fingerprint") == digest and record.get("status") in FINISHED:
            return number, record
    return None
