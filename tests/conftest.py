"""Shared fixtures: the shared CIFAR-10 copy; two threads as on the CI machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT

# Two threads, as on the CI machine; keeps per-test timings predictable.
torch.set_num_threads(min(2, torch.get_num_threads()))


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
