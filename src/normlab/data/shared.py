"""The shared CIFAR-10 JPEG copy of the development machines, unpacked into an ignored cache.

`python -m normlab.data.shared` (or `make data`) unpacks it and prints the data root.

Where things are is found without assuming where normlab is installed:
- the project: the nearest folder, from the current directory upward, whose pyproject.toml
  names the project normlab; failing that, the nearest such folder above this file (an
  editable install, or a virtual environment inside the checkout, used from elsewhere);
- the archive: in $NORMLAB_SHARED_DATA, else in shared/data beside the project or inside it;
- the cache: $NORMLAB_CACHE, else .cache in the project.
"""

from __future__ import annotations

import fcntl
import os
import re
import tarfile
from pathlib import Path

PROJECT_NAME = "normlab"
ARCHIVE_NAME = "cifar10-jpg.tar.gz"
SHARED_DATA_ENV = "NORMLAB_SHARED_DATA"
CACHE_ENV = "NORMLAB_CACHE"

_TOML_TABLE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(?:#.*)?$")
_TOML_NAME = re.compile(r"""^\s*name\s*=\s*["']([^"']*)["']""")


def _project_name(pyproject: Path) -> str | None:
    """The `name` of a pyproject.toml's [project] table; None where there is none."""
    try:
        text = pyproject.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    table = None
    for line in text.splitlines():
        header = _TOML_TABLE.match(line)
        if header:
            table = header.group(1).strip()
        elif table == "project" and (name := _TOML_NAME.match(line)):
            return name.group(1)
    return None


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` whose pyproject.toml names the project normlab.
    Without `start`: searched from the current directory, then from this file; None if
    neither lies in a normlab checkout."""
    origins = [start] if start is not None else [Path.cwd(), Path(__file__).parent]
    for origin in origins:
        origin = origin.resolve()
        for folder in (origin, *origin.parents):
            if _project_name(folder / "pyproject.toml") == PROJECT_NAME:
                return folder
    return None


def archive_candidates() -> list[Path]:
    """Where the archive may lie, in the order looked: $NORMLAB_SHARED_DATA, then
    shared/data beside the project and inside it."""
    candidates = []
    if os.environ.get(SHARED_DATA_ENV):
        candidates.append(Path(os.environ[SHARED_DATA_ENV]) / ARCHIVE_NAME)
    root = find_project_root()
    if root is not None:
        candidates += [
            root.parent / "shared" / "data" / ARCHIVE_NAME,
            root / "shared" / "data" / ARCHIVE_NAME,
        ]
    return candidates


def shared_archive() -> Path | None:
    """The first of `archive_candidates()` that exists; None if none does."""
    return next((path for path in archive_candidates() if path.is_file()), None)


def default_cache_dir() -> Path:
    """The ignored cache folder: $NORMLAB_CACHE, else .cache in the project."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = find_project_root()
    if root is None:
        raise FileNotFoundError(
            f"no cache folder: neither {Path.cwd()} nor the normlab package lies in a normlab "
            f"checkout (a pyproject.toml naming the project {PROJECT_NAME}); set {CACHE_ENV} "
            "to a folder for the cache"
        )
    return root / ".cache"


def ensure_shared_cifar10(cache_dir: Path | None = None) -> Path:
    """Unpack the shared CIFAR-10 once and return its root (holding train/ and test/)."""
    cache_dir = cache_dir or default_cache_dir()
    root = cache_dir / "data" / "cifar10"
    marker = root / ".unpacked"
    if marker.exists():
        return root
    archive = shared_archive()
    if archive is None:
        looked = ", ".join(str(path.parent) for path in archive_candidates()) or (
            f"nowhere: {SHARED_DATA_ENV} is unset and no normlab checkout was found"
        )
        raise FileNotFoundError(
            f"shared CIFAR-10 archive {ARCHIVE_NAME} not found (looked in: {looked}); set "
            f"{SHARED_DATA_ENV} to the folder holding it, or, with network, use data=cifar10 "
            "data.download=true instead"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    # One unpacking at a time: parallel test workers or sweep jobs may all ask at once.
    with open(root.parent / ".cifar10.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return root
        with tarfile.open(archive) as tar:
            tar.extractall(root.parent, filter="data")
        if not (root / "train").is_dir():
            raise FileNotFoundError(f"{archive} did not unpack into {root}/train")
        marker.touch()
    return root


if __name__ == "__main__":
    print(ensure_shared_cifar10())
