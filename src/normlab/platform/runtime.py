"""Threads for one job: torch's thread pools sized to the cores this process owns.

Several jobs on one machine (a submitit_local sweep, SLURM tasks sharing a node) each taking one
thread per core of the whole machine oversubscribe it and run many times slower than sharing
explains, so each job sizes its threads from its own share: its CPU affinity (SLURM and
submitit pin tasks to cores), SLURM_CPUS_PER_TASK, and the share the local launcher below hands
each of the jobs it starts at once (hydra_plugins.normlab_launcher).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import torch

#: Cores per job that hydra_plugins.normlab_launcher.SharedCoresLocalLauncher hands to the jobs it starts (an environment
#: variable, inherited by the job processes).
CORES_ENV = "NORMLAB_CPUS_PER_JOB"


def _positive_int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() and int(value) > 0 else None


#: The environment this process started with: OMP_NUM_THREADS set by whoever launched it is a
#: limit too; the value configure_threads itself exports later is not.
_LAUNCH_ENV = dict(os.environ)


def owned_cores(environ: Mapping[str, str] | None = None, affinity: set[int] | None = None) -> int:
    """Cores this process may use: its CPU affinity, capped by SLURM_CPUS_PER_TASK, by the local
    launcher's per-job share and by an OMP_NUM_THREADS it was started with."""
    env = _LAUNCH_ENV if environ is None else environ
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # not Linux
            affinity = set(range(os.cpu_count() or 1))
    cores = max(1, len(affinity))
    for name in ("SLURM_CPUS_PER_TASK", CORES_ENV, "OMP_NUM_THREADS"):
        limit = _positive_int(env.get(name))
        if limit is not None:
            cores = min(cores, limit)
    return cores


def resolve_threads(requested: int | None, processes: int = 1, cores: int | None = None) -> int:
    """`requested` when given (the config's `threads`), else this process's share of the cores
    it owns when `processes` training processes share them (ddp_spawn ranks)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be a positive integer or null, got {requested!r}")
        return requested
    cores = owned_cores() if cores is None else cores
    return max(1, cores // max(1, processes))


def configure_threads(requested: int | None, processes: int = 1) -> int:
    """Set torch's intra-op (and, while still possible, inter-op) threads and OMP_NUM_THREADS
    for this job; returns the thread count. Processes it spawns (DDP ranks) inherit
    OMP_NUM_THREADS, which Lightning then leaves as it is."""
    threads = resolve_threads(requested, processes)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # fixed once inter-op work has started
        torch.set_num_interop_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def cores_per_job(jobs: int, cpus_per_task: int | None, cores: int | None = None) -> int:
    """The cores each of `jobs` jobs started at once gets: `cpus_per_task` when set, else an
    equal share of the cores this process owns (at least one)."""
    if cpus_per_task:
        return int(cpus_per_task)
    cores = owned_cores() if cores is None else cores
    return max(1, cores // max(1, jobs))
