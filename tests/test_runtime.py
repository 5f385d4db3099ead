"""Each job's torch threads come from the cores it owns, not from the whole machine."""

from __future__ import annotations

import os

import pytest
import torch

from normlab.platform.runtime import (
    CORES_ENV,
    configure_threads,
    cores_per_job,
    owned_cores,
    resolve_threads,
)

pytestmark = pytest.mark.fast  # in-process: make test-fast

EIGHT = set(range(8))


def test_owned_cores_is_the_affinity_without_limits() -> None:
    assert owned_cores({}, EIGHT) == 8
    assert owned_cores({}, {3}) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_CPUS_PER_TASK": "3"}, 3),
        ({CORES_ENV: "2"}, 2),
        ({"OMP_NUM_THREADS": "4"}, 4),
        ({"SLURM_CPUS_PER_TASK": "16"}, 8),  # never more than the affinity allows
        ({"SLURM_CPUS_PER_TASK": "", CORES_ENV: "0"}, 8),  # empty or zero: no limit
        ({"SLURM_CPUS_PER_TASK": "6", CORES_ENV: "5", "OMP_NUM_THREADS": "7"}, 5),
    ],
)
def test_owned_cores_takes_the_tightest_limit(env: dict[str, str], expected: int) -> None:
    assert owned_cores(env, EIGHT) == expected


def test_resolve_threads_splits_the_cores_among_spawned_ranks() -> None:
    assert resolve_threads(None, processes=1, cores=8) == 8
    assert resolve_threads(None, processes=2, cores=8) == 4
    assert resolve_threads(None, processes=3, cores=2) == 1  # at least one thread
    assert resolve_threads(6, processes=2, cores=2) == 6  # an explicit value is taken as it is


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_resolve_threads_refuses_what_is_no_thread_count(bad: object) -> None:
    with pytest.raises(ValueError, match="threads must be a positive integer or null"):
        resolve_threads(bad)  # type: ignore[arg-type]


def test_cores_per_job_shares_the_machine_among_jobs_started_at_once() -> None:
    assert cores_per_job(4, None, cores=8) == 2
    assert cores_per_job(3, None, cores=8) == 2
    assert cores_per_job(16, None, cores=8) == 1
    assert cores_per_job(16, 3, cores=8) == 3  # cpus_per_task wins


def test_configure_threads_sets_torch_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("normlab.platform.runtime._LAUNCH_ENV", {CORES_ENV: "1"})
    monkeypatch.setenv("OMP_NUM_THREADS", "9")
    before = torch.get_num_threads()
    try:
        assert configure_threads(None) == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert configure_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
