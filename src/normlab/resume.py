"""What a job started again in its run folder continues from (a requeued or re-run job)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to resume from.

    `ckpt_path=last`: the run folder's checkpoints/last.ckpt (an error if there is none);
    `ckpt_path=<file>`: that file; `ckpt_path=null` with `resume=true` (the default):
    checkpoints/last.ckpt when it exists (a requeued or re-run job), else a fresh start.
    """
    last = output_dir / "checkpoints" / "last.ckpt"
    requested = cfg.get("ckpt_path")
    if requested == "last":
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist")
        return str(last)
    if requested:
        if not Path(str(requested)).is_file():
            raise FileNotFoundError(f"ckpt_path={requested} does not exist")
        return str(requested)
    return str(last) if cfg.get("resume", True) and last.is_file() else None


def csv_version(output_dir: Path) -> str:
    """'' (csv/metrics.csv) for a fresh run; a resumed run that finds earlier metrics writes
    csv/resumed_<k>/metrics.csv instead, since Lightning's CSV logger would overwrite them."""
    if not (output_dir / "csv" / "metrics.csv").exists():
        return ""
    k = 1
    while (output_dir / "csv" / f"resumed_{k}").exists():
        k += 1
    return f"resumed_{k}"
