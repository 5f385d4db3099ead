"""Shared fixtures: the overrides that shrink a run, the shared CIFAR-10 copy; two threads as on
the CI machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, Shrink, shrunk

# Two threads, as on the CI machine; one per worker when pytest-xdist runs tests in parallel
# (`make test` runs two workers), inherited by the train.py subprocesses: oversubscribed
# OpenMP threads would slow every test several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shrink() -> Shrink:
    """The Hydra overrides that make a run tiny: `shrink()` is tests.helpers.SHRINK (one epoch of
    64 digits, 64 to validate, no sanity pass, quiet); `shrink("batch_size=16", ...)` adds a
    test's own, replacing those of the same key; `shrink(without=["trainer.max_epochs"])` leaves
    a key at the config's value (tests.helpers.shrunk)."""
    return shrunk


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The shared CIFAR-10 JPEG tree (train/, test/), unpacked into .cache; skip if absent."""
    from normlab.data.shared import ensure_shared_cifar10, shared_archive

    if (
        shared_archive() is None
        and not (REPO_ROOT / ".cache" / "data" / "cifar10" / ".unpacked").exists()
    ):
        pytest.skip("shared CIFAR-10 archive not found (../shared/data/cifar10-jpg.tar.gz)")
    return ensure_shared_cifar10()
