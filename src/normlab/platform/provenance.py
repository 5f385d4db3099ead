"""Where a run's numbers come from: the code (normlab version, git commit, uncommitted
changes), torch, the device, the precision and the memory layout, as results.json records them
and docs/results.md states them."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, TypedDict

import torch

import normlab

SOURCE_ROOT = Path(normlab.__file__).resolve().parents[2]  # the checkout of an editable install


class Provenance(TypedDict):
    """The code and machine a run ran on."""

    normlab_version: str
    git_commit: str | None  # None outside a git checkout (an installed wheel)
    git_dirty: bool | None  # tracked files differed from the commit when the run started
    torch_version: str
    device_name: str


@lru_cache(maxsize=1)
def git_state(root: Path = SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(commit, whether tracked files have uncommitted changes) of the checkout at `root`, or
    (None, None) where it is no git checkout or git is missing."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(changes)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def device_name(accelerator: Any) -> str:
    """The GPU's name when the run trains on CUDA, else the CPU's model name."""
    if str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_name()


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model as the kernel reports it (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def provenance(accelerator: Any) -> Provenance:
    """The provenance of a run training on `accelerator` (trainer.accelerator)."""
    commit, dirty = git_state()
    return {
        "normlab_version": normlab.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "device_name": device_name(accelerator),
    }


def provenance_summary(records: list[dict[str, Any]]) -> str:
    """One line naming the code, torch, device, precision and memory format that a set of runs
    (results.json records) ran with, each distinct combination with its count of runs."""
    combos: dict[str, int] = {}
    unrecorded = 0
    for record in records:
        origin = record.get("provenance")
        if not isinstance(origin, dict):
            unrecorded += 1
            continue
        commit = origin.get("git_commit")
        code = f"normlab {origin.get('normlab_version')}"
        if commit:
            state = "with uncommitted changes" if origin.get("git_dirty") else "clean"
            code += f" at commit {str(commit)[:10]} ({state})"
        text = (
            f"{code}, torch {origin.get('torch_version')}, {origin.get('device_name')}, "
            f"{record.get('precision')}, {record.get('memory_format')}"
        )
        combos[text] = combos.get(text, 0) + 1
    parts = [f"{text} ({_runs(count)})" for text, count in combos.items()]
    if unrecorded:
        parts.append(f"not recorded ({_runs(unrecorded)} made before normlab recorded provenance)")
    return "; ".join(parts) or "no runs"


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"
