"""What a job started again in its run folder continues from (a requeued or re-run job)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from normlab.job.checkpoint_io import unreadable_reason
from normlab.run_folder import CHECKPOINT_SUFFIX, RunFolder


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from (None: a fresh start) and, when the run folder's
    last.ckpt could not be read, what was done instead (recorded in results.json)."""

    path: str | None
    fallback: str | None = None


def resume_checkpoint(output_dir: Path, requested: str | None, resume: bool) -> ResumePoint:
    """The checkpoint to resume from (`requested`: the config's ckpt_path; `resume`: its resume).

    `ckpt_path=last`: the run folder's checkpoints/last.ckpt (an error if there is none or it
    cannot be read); `ckpt_path=<file>`: that file (likewise); `ckpt_path=null` with
    `resume=true` (the default): checkpoints/last.ckpt when it exists (a requeued or re-run
    job), else a fresh start. A last.ckpt that does not load (a truncated file) falls back to
    the newest other checkpoint of the folder that does, else to a fresh start, with one line.
    """
    last = RunFolder(output_dir).last_checkpoint
    if requested:
        chosen = last if requested == "last" else Path(str(requested))
        if not chosen.is_file():
            raise FileNotFoundError(f"ckpt_path={requested} but {chosen} does not exist")
        reason = unreadable_reason(chosen)
        if reason is not None:
            raise ValueError(f"ckpt_path={requested}: {chosen} cannot be read ({reason})")
        return ResumePoint(str(chosen))
    if not (resume and last.is_file()):
        return ResumePoint(None)
    reason = unreadable_reason(last)
    if reason is None:
        return ResumePoint(str(last))
    older = sorted(
        (p for p in last.parent.glob(f"*{CHECKPOINT_SUFFIX}") if p != last),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    usable = next((p for p in older if unreadable_reason(p) is None), None)
    then = f"resuming from {usable.name} instead" if usable else "starting afresh"
    fallback = f"{last} cannot be read ({reason}); {then}"
    print(f"normlab: warning: {fallback}", file=sys.stderr)
    return ResumePoint(str(usable) if usable else None, fallback)


def csv_version(output_dir: Path) -> str:
    """'' (csv/metrics.csv) for a fresh run; a resumed run that finds earlier metrics writes
    csv/resumed_<k>/metrics.csv instead, since Lightning's CSV logger would overwrite them."""
    folder = RunFolder(output_dir)
    if not folder.metrics_csv.exists():
        return ""
    k = 1
    while (folder.csv / f"resumed_{k}").exists():
        k += 1
    return f"resumed_{k}"
