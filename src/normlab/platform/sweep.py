"""What one sweep command did, and the line that closes it.

A sweep folder can hold jobs of earlier commands (a re-run skips what already finished), so
the closing line counts the jobs of *this* command, from a ledger the command keeps in the
sweep folder: `SweepSummary.on_multirun_start` names the command (a token in the environment,
which every launcher passes to its jobs: in process, submitit_local, SLURM), and each job
notes there whether it was launched, skipped as already finished, or refused (its folder holds
another run, or another process runs in it). At the end the line reads each noted job's
results.json: completed, failed, diverged, interrupted, or unrecorded when a launched job left
no outcome (killed from outside), and the jobs of the grid never started (the command was
stopped first; the sweeper notes how many the grid has). The command then exits non-zero when
any job failed, was refused, is unrecorded or never started, so a script or CI that runs a
sweep sees it.

Configured under `hydra.callbacks` in conf/hydra/default.yaml.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normlab.results import RESULTS_FILE, MalformedResults, load_record

COMMAND_ENV = "NORMLAB_SWEEP_COMMAND"  # the token of the sweep command a job belongs to
LEDGER_DIR = Path(".normlab") / "commands"  # <sweep folder>/.normlab/commands/<token>/<job>.json
PLANNED_FILE = "planned"  # in the ledger: the number of jobs of the command's grid
Outcome = Literal["launched", "skipped", "refused"]


def start_command() -> str:
    """Name this sweep command (its jobs inherit the token through the environment)."""
    token = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    os.environ[COMMAND_ENV] = token
    return token


def _ledger(sweep_dir: Path, token: str) -> Path:
    return Path(sweep_dir) / LEDGER_DIR / token


def note_job(
    sweep_dir: Path, job_num: int, folder: Path, outcome: Outcome, reason: str = ""
) -> None:
    """Record in this command's ledger what became of job `job_num` (the last note wins);
    nothing outside a sweep command."""
    token = os.environ.get(COMMAND_ENV)
    if not token:
        return
    ledger = _ledger(sweep_dir, token)
    ledger.mkdir(parents=True, exist_ok=True)
    note = {"job": job_num, "folder": str(folder), "outcome": outcome, "reason": reason}
    tmp = ledger / f".{job_num}.json.tmp"
    tmp.write_text(json.dumps(note))
    tmp.replace(ledger / f"{job_num}.json")


def note_planned(sweep_dir: Path, jobs: int) -> None:
    """Record in this command's ledger how many jobs its grid has (the sweeper knows before
    any is launched), so a command stopped early counts the jobs it never started."""
    token = os.environ.get(COMMAND_ENV)
    if not token:
        return
    ledger = _ledger(sweep_dir, token)
    ledger.mkdir(parents=True, exist_ok=True)
    (ledger / PLANNED_FILE).write_text(f"{jobs}\n")


def noted_once(sweep_dir: Path, job_num: int) -> bool:
    """Whether this command's ledger already has job `job_num`."""
    token = os.environ.get(COMMAND_ENV)
    return bool(token) and (_ledger(sweep_dir, str(token)) / f"{job_num}.json").is_file()


@dataclass
class CommandTally:
    """The jobs of one sweep command: how each ended, and what the command did with it."""

    statuses: Counter[str] = field(default_factory=Counter)
    launched: int = 0
    skipped: int = 0
    refused: int = 0
    unrecorded: int = 0
    planned: int = 0  # the grid's jobs, when the sweeper noted them

    @property
    def noted(self) -> int:
        return self.launched + self.skipped + self.refused

    @property
    def not_started(self) -> int:
        """Jobs of the grid the command never reached (it was stopped first)."""
        return max(0, self.planned - self.noted)

    @property
    def jobs(self) -> int:
        return self.noted + self.not_started

    @property
    def troubled(self) -> int:
        """Jobs that make the command fail: failed, refused, without an outcome or never
        started."""
        return self.statuses["failed"] + self.refused + self.unrecorded + self.not_started


def _recorded_status(path: Path) -> str | None:
    """The status in results.json `path`; None when it is malformed (named in a warning)."""
    try:
        return str(load_record(path)["status"])
    except MalformedResults as error:
        print(f"normlab: warning: {error}", file=sys.stderr)
        return None


def _status(folder: Path) -> str | None:
    """The outcome in `folder`'s results.json; None when absent, malformed or still
    `running`."""
    path = folder / RESULTS_FILE
    status = _recorded_status(path) if path.is_file() else None
    return None if status == "running" else status


def command_tally(sweep_dir: Path, token: str | None = None) -> CommandTally | None:
    """The tally of command `token` (default: this process's command) in `sweep_dir`; None
    when that command left no ledger there."""
    token = token or os.environ.get(COMMAND_ENV)
    ledger = _ledger(sweep_dir, str(token))
    if not token or not ledger.is_dir():
        return None
    tally = CommandTally()
    planned = ledger / PLANNED_FILE
    if planned.is_file() and planned.read_text().strip().isdigit():
        tally.planned = int(planned.read_text())
    for path in sorted(ledger.glob("*.json")):
        try:
            note: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        outcome = note.get("outcome")
        if outcome == "refused":
            tally.refused += 1
            continue
        if outcome == "skipped":
            tally.skipped += 1
        else:
            tally.launched += 1
        status = _status(Path(str(note.get("folder"))))
        if status is None:
            tally.unrecorded += 1
        else:
            tally.statuses[status] += 1
    return tally


def sweep_statuses(sweep_dir: Path) -> Counter[str]:
    """Count the `status` of every results.json under `sweep_dir`; a malformed one is named in
    a warning and counted 'missing'."""
    counts: Counter[str] = Counter()
    for path in sorted(Path(sweep_dir).rglob(RESULTS_FILE)):
        counts[_recorded_status(path) or "missing"] += 1
    return counts


def _status_parts(counts: Counter[str]) -> list[str]:
    counts = Counter(counts)
    parts = [f"{counts.pop(s, 0)} {s}" for s in ("completed", "failed", "diverged")]
    return parts + [f"{n} {s}" for s, n in sorted(counts.items()) if n]


def summary_line(sweep_dir: Path, tally: CommandTally | None = None) -> str:
    """'normlab: sweep finished: N jobs: a completed, b failed, c diverged; l launched, s
    skipped as already finished, r refused, u unrecorded[, n not started]; results in <dir>'
    for this command's
    jobs (`tally`, default: this process's command). Without a ledger (a folder summarised
    after the fact) it counts every results.json of the folder."""
    tally = tally if tally is not None else command_tally(sweep_dir)
    if tally is None:
        counts = sweep_statuses(sweep_dir)
        missing = counts.pop("missing", 0)
        parts = _status_parts(counts)
        if missing:
            parts.append(f"{missing} without results")
        total = sum(counts.values()) + missing
        return f"normlab: sweep finished: {total} jobs: {', '.join(parts)}; results in {sweep_dir}"
    did = (
        f"{tally.launched} launched, {tally.skipped} skipped as already finished, "
        f"{tally.refused} refused, {tally.unrecorded} unrecorded"
    )
    if tally.not_started:
        did += f", {tally.not_started} not started"
    return (
        f"normlab: sweep finished: {tally.jobs} jobs: {', '.join(_status_parts(tally.statuses))}; "
        f"{did}; results in {sweep_dir}"
    )


class SweepSummary(Callback):
    """Name the sweep command when it starts; print its summary line when it ends, exiting 1
    when any of its jobs failed, was refused, left no outcome or never started."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        start_command()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tally = command_tally(sweep_dir)
        print(summary_line(sweep_dir, tally), flush=True)
        if tally is not None and tally.troubled:
            sys.exit(1)
