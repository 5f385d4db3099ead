"""What machine a benchmark ran on, for the headers of docs/performance.md sections."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from normlab.platform.provenance import cpu_name

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else platform.processor()."""
    return cpu_name()


def command_line() -> str:
    """How this benchmark was run, as a reader would type it: `python scripts/<name>.py ...`
    without the --markdown destination (a temporary file of `make bench`)."""
    args, shown = sys.argv[1:], []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--markdown":
            skip = True
            continue
        if not arg.startswith("--markdown="):
            shown.append(shlex.quote(arg))
    script = Path(sys.argv[0]).resolve()
    name = script.relative_to(REPO) if script.is_relative_to(REPO) else script.name
    return " ".join(["python", str(name), *shown])


def repo_relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (no machine paths in docs)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)
