"""results.json: the one file every run writes and every report reads."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
RESULTS_MODE = 0o644  # readable by the group and others, like every other output of a run
# "debug": a run under trainer.fast_dev_run (a smoke test, never averaged into a report)
STATUSES = ("running", "completed", "diverged", "failed", "interrupted", "debug")
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
REDACTED = "<redacted>"


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (…_KEY, …_TOKEN, …SECRET…).

    Values shorter than 6 characters are ignored (too likely to match ordinary text).
    """
    env = os.environ if environ is None else environ
    values = {
        v for k, v in env.items() if any(m in k.upper() for m in SECRET_MARKERS) and len(v) >= 6
    }
    return sorted(values, key=len, reverse=True)


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """`value` (str, dict, list) with every secret environment value replaced by <redacted>."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_results(output_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.json atomically (temp file + rename) so readers never see half a file."""
    if results.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {results.get('status')!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RESULTS_FILE
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".results-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(redact(_clean(results)), handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, RESULTS_MODE)  # mkstemp makes it owner-only; collaborators read sweeps
    os.replace(tmp, path)
    return path


def read_results(output_dir: Path) -> dict[str, Any]:
    """The results.json of a run folder."""
    return json.loads((Path(output_dir) / RESULTS_FILE).read_text())
