"""A sweep's run records as one committed file: the results.json of every job, one per line.

Sweep folders hold checkpoints and logs and are never committed, so a published comparison
would be lost with the machine that ran it. `export_records` keeps what reports read (each
job's results.json) in a JSON Lines file, with every path made relative to the project;
`materialize_records` writes them back as a folder of results.json files, which the sweep
report (normlab.reporting.report.write_report) reads like the sweep folder itself.
`add_finished_runs` adds a chunk of a comparison run elsewhere (another machine, another
session) to records already published, without the sweep folder that made them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normlab.results import RESULTS_FILE, write_results
from normlab.run_folder import FINISHED

RUN_KEY = "run"  # the job's folder below the sweep folder, e.g. "3" or "b2_7"


def _rewrite_paths(value: Any, old: str, new: str) -> Any:
    """`value` with `old` replaced by `new` in every string, lists and dicts included."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_rewrite_paths(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _rewrite_paths(item, old, new) for key, item in value.items()}
    return value


def _relative_paths(value: Any, root: str) -> Any:
    """`value` with every string that names a path under `root` made relative to it, so a
    record carries no path of the machine that made it."""
    return _rewrite_paths(_rewrite_paths(value, root + "/", ""), root, ".")


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


@dataclass
class AddedRuns:
    """What add_finished_runs did with the runs below the folders it was given."""

    added: list[str] = field(default_factory=list)  # run keys written to the records
    already_published: list[str] = field(default_factory=list)  # same settings already there
    unfinished: dict[str, str] = field(default_factory=dict)  # run key -> status, left out

    def summary(self) -> str:
        """One line: how many runs were added, skipped as published, left out as unfinished."""
        left_out = ", ".join(f"{run} ({status})" for run, status in self.unfinished.items())
        return (
            f"added {len(self.added)} finished runs, {len(self.already_published)} already "
            f"published, {len(self.unfinished)} not finished and left out"
            + (f": {left_out}" if left_out else "")
        )


def add_finished_runs(records: Path, folders: Sequence[Path], sweep: str, root: Path) -> AddedRuns:
    """Append to the records file `records` the finished runs (completed or diverged) below
    each sweep folder in `folders`, so a comparison can be finished in chunks on machines whose
    folders are not kept. Each run is keyed <folder name>/<job folder> and its paths are
    rewritten as if the folder lay in the section's sweep folder `sweep` (relative to `root`).
    Runs whose settings (fingerprint) the records already hold are skipped, unfinished ones
    left out; lines already published are kept unchanged."""
    existing = load_records(records) if Path(records).is_file() else []
    keys = {record[RUN_KEY] for record in existing}
    published = {
        record.get("fingerprint") for record in existing if record.get("status") in FINISHED
    }
    names = [Path(folder).resolve().name for folder in folders]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"folders named {', '.join(twice)} more than once; their runs would share keys"
        )
    outcome, lines = AddedRuns(), []
    for folder in folders:
        folder = Path(folder).resolve()
        for record in read_sweep(folder):
            key = f"{folder.name}/{record.pop(RUN_KEY)}"
            if record.get("status") not in FINISHED:
                outcome.unfinished[key] = str(record.get("status"))
                continue
            digest = record.get("fingerprint")
            if not digest:
                raise ValueError(
                    f"{folder}/{key.split('/', 1)[1]}: its results.json has no fingerprint, so whether it is already published cannot be told"
                )
            if digest in published:
                outcome.already_published.append(key)
                continue
            if key in keys:
                raise ValueError(
                    f"run {key} is already published with other settings; rename the folder {folder}"
                )
            relocated = _rewrite_paths(record, str(folder), f"{sweep}/{folder.name}")
            relocated = _relative_paths(relocated, str(Path(root).resolve()))
            relocated[RUN_KEY] = key
            line = json.dumps(relocated, sort_keys=True)
            if folder.parent != folder.parent.parent and str(folder.parent) in line:
                raise ValueError(
                    f"{folder}: a record still names {folder.parent} after rewriting its paths"
                )
            lines.append(line)
            published.add(digest)
            keys.add(key)
            outcome.added.append(key)
    if lines:
        Path(records).parent.mkdir(parents=True, exist_ok=True)
        text = Path(records).read_text() if Path(records).is_file() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        Path(records).write_text(text + "\n".join(lines) + "\n")
    return outcome
