"""The shared CIFAR-10 JPEG copy of the development machines, unpacked into an ignored cache.

`python -m normlab.data.shared` (or `make data`) unpacks it and prints the data root.
"""

from __future__ import annotations

import fcntl
import os
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
ARCHIVE_NAME = "cifar10-jpg.tar.gz"


def shared_archive() -> Path | None:
    """Where the archive lies: $NORMLAB_SHARED_DATA, else ../shared/data beside the repo."""
    candidates = []
    if os.environ.get("NORMLAB_SHARED_DATA"):
        candidates.append(Path(os.environ["NORMLAB_SHARED_DATA"]) / ARCHIVE_NAME)
    candidates += [
        REPO_ROOT.parent / "shared" / "data" / ARCHIVE_NAME,
        REPO_ROOT / "shared" / "data" / ARCHIVE_NAME,
    ]
    return next((path for path in candidates if path.is_file()), None)


def default_cache_dir() -> Path:
    """The ignored cache folder (.cache under the repo, or $NORMLAB_CACHE)."""
    return Path(os.environ.get("NORMLAB_CACHE", REPO_ROOT / ".cache"))


def ensure_shared_cifar10(cache_dir: Path | None = None) -> Path:
    """Unpack the shared CIFAR-10 once and return its root (holding train/ and test/)."""
    cache_dir = cache_dir or default_cache_dir()
    root = cache_dir / "data" / "cifar10"
    marker = root / ".unpacked"
    if marker.exists():
        return root
    archive = shared_archive()
    if archive is None:
        raise FileNotFoundError(
            f"shared CIFAR-10 archive {ARCHIVE_NAME} not found (looked in ../shared/data and "
            "$NORMLAB_SHARED_DATA); with network, use data=cifar10 data.download=true instead"
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
