"""Shared fixtures: composed configs, the shared CIFAR-10 copy, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# Two threads, as on the CI machine; keeps per-test timings predictable.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The shared CIFAR-10 JPEG tree (train/, test/), unpacked into .cache; skip if absent."""
    from normlab.data.shared import ensure_shared_cifar10, shared_archive

    if shared_archive() is None and not (REPO_ROOT / ".cache" / "data" / "cifar10" / ".unpacked").exists():
        pytest.skip("shared CIFAR-10 archive not found (../shared/data/cifar10-jpg.tar.gz)")
    return ensure_shared_cifar10()


def run_train(args: list[str], tmp_path: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python train.py <args>` as a subprocess with outputs under tmp_path, quiet progress."""
    full_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
    full_env.update(env or {})
    base = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        f"hydra.run.dir={tmp_path}/run",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "callbacks.progress=none",
        "print_config=false",
    ]
    return subprocess.run(base + args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
