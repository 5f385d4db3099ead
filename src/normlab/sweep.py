"""Hydra callback that closes a multirun with one line: how many jobs completed, failed, diverged.

Configured under `hydra.callbacks` in conf/hydra/default.yaml; it reads only the results.json
files of the sweep folder, as reports do, so it works with every launcher.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normlab.results import RESULTS_FILE, MalformedResults, load_record


def sweep_statuses(sweep_dir: Path) -> Counter[str]:
    """Count the `status` of every results.json under `sweep_dir`; a malformed one is named in
    a warning and counted 'missing'."""
    counts: Counter[str] = Counter()
    for path in sorted(sweep_dir.rglob(RESULTS_FILE)):
        try:
            counts[str(load_record(path)["status"])] += 1
        except MalformedResults as error:
            print(f"normlab: warning: {error}", file=sys.stderr)
            counts["missing"] += 1
    return counts


SKIPPED_MARKER = ".skipped"


def mark_skipped(output_dir: Path) -> None:
    """Note that a re-run sweep skipped this finished job (read by the summary line)."""
    (Path(output_dir) / SKIPPED_MARKER).touch()


def skipped_since(sweep_dir: Path, since: float) -> int:
    """Jobs of `sweep_dir` skipped as already finished since `since` (a time.time())."""
    return sum(1 for p in sweep_dir.rglob(SKIPPED_MARKER) if p.stat().st_mtime >= since)


def summary_line(sweep_dir: Path, skipped: int = 0) -> str:
    """'normlab: sweep finished: N jobs: a completed, b failed, c diverged (...) in <dir>', with
    how many of them a re-run skipped because they had already finished."""
    counts = sweep_statuses(sweep_dir)
    total = sum(counts.values())
    missing = counts.pop("missing", 0)
    parts = [f"{counts.pop(s, 0)} {s}" for s in ("completed", "failed", "diverged")]
    parts += [f"{n} {s}" for s, n in sorted(counts.items())]
    if missing:
        parts.append(f"{missing} without results")
    if skipped:
        parts.append(f"{skipped} of them skipped as already finished")
    return f"normlab: sweep finished: {total} jobs: {', '.join(parts)}; results in {sweep_dir}"


class SweepSummary(Callback):
    """Print the summary line when a multirun ends."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times have coarse resolution on some systems

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        print(summary_line(sweep_dir, skipped_since(sweep_dir, self.started)), flush=True)
