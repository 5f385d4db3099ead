"""What `hydra/launcher=slurm` asks SLURM for, checked before anything is submitted, and what
a sweep records for a job that SLURM ended without a result.

The SLURM request follows the job's trainer: a GPU trainer gets one task per GPU (each task is
one DDP rank), a CPU trainer gets no GPU; each task gets `threads` cores (when null: 8 for a GPU rank, 4 for a
CPU job, at most what a node of the partition has per task). Values
the user sets that contradict the trainer, or that no node of the partition can hold, are
refused with one line before submitting, instead of a gres error, a job that pends forever or a
GPU held by a job that trains on the CPU.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from normlab.platform.environment import device_count
from normlab.results import RESULTS_FILE, RunResult, read_results, write_results

AUTO = "auto"
GPU_CPUS_PER_TASK = 8  # data-loader workers and the main thread of one GPU rank
CPU_CPUS_PER_TASK = 4  # threads of a CPU job when `threads` is not set
REQUEST_KEYS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task")


class SlurmRequestError(ValueError):
    """A launcher setting that SLURM or the trainer cannot honour (one line, nothing submitted)."""


@dataclass(frozen=True)
class Partition:
    """What sinfo says one node of a partition has."""

    name: str
    cpus: int
    gpus: int


def uses_gpus(trainer: DictConfig) -> bool:
    """Whether the trainer trains on GPUs."""
    return str(trainer.get("accelerator", "cpu")) in ("gpu", "cuda")


def slurm_request(
    cfg: DictConfig, params: dict[str, Any], partition: Partition | None = None
) -> dict[str, int]:
    """nodes, gpus_per_node, tasks_per_node and cpus_per_task for the job `cfg`: the launcher's
    values where set, `auto` (or null) derived from the trainer (cores per task at most what a
    node of `partition` has per task); a contradiction is refused."""
    trainer = cfg.trainer
    gpu = uses_gpus(trainer)
    devices = trainer.get("devices", 1)
    if gpu and not (isinstance(devices, int) and devices > 0 or isinstance(devices, list)):
        raise SlurmRequestError(
            f"trainer.devices={devices} cannot size a SLURM request; give the GPUs per node "
            "as a number (trainer.devices=4)"
        )
    ranks = device_count(trainer)
    threads = cfg.get("threads")
    cpus = int(threads) if threads else GPU_CPUS_PER_TASK if gpu else CPU_CPUS_PER_TASK
    if partition is not None and not threads:
        cpus = max(1, min(cpus, partition.cpus // ranks))
    derived = {
        "nodes": int(trainer.get("num_nodes", 1) or 1),
        "gpus_per_node": ranks if gpu else 0,
        "tasks_per_node": ranks,
        "cpus_per_task": cpus,
    }
    request = {}
    for key in REQUEST_KEYS:
        value = params.get(key)
        request[key] = derived[key] if value in (None, AUTO) else int(value)
    trainer_name = "a GPU trainer" if gpu else f"trainer.accelerator={trainer.get('accelerator')}"
    if gpu and request["gpus_per_node"] == 0:
        raise SlurmRequestError(
            f"hydra.launcher.gpus_per_node=0 with {trainer_name}: the job would find no GPU; "
            "leave gpus_per_node=auto or use trainer=cpu"
        )
    if not gpu and request["gpus_per_node"] > 0:
        raise SlurmRequestError(
            f"hydra.launcher.gpus_per_node={request['gpus_per_node']} with {trainer_name}: the "
            "job would hold GPUs and train on the CPU; use trainer=gpu (or ddp), or leave "
            "gpus_per_node=auto"
        )
    if request["tasks_per_node"] != ranks:
        raise SlurmRequestError(
            f"hydra.launcher.tasks_per_node={request['tasks_per_node']} but the trainer runs "
            f"{ranks} rank(s) per node (one task is one rank); leave tasks_per_node=auto"
        )
    return request


def partition_info(partition: str | None) -> Partition | None:
    """The largest node of `partition` (the default one when None) by sinfo; None without
    sinfo (a request is then not checked against the cluster)."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "--noheader", "--format=%P %c %G"]
    if partition:
        command.append(f"--partition={partition}")
    try:
        lines = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split() for line in lines if line.strip()]
    if not partition:
        rows = [row for row in rows if row[0].endswith("*")] or rows
    if not rows:
        raise SlurmRequestError(
            f"hydra.launcher.partition={partition}: sinfo lists no such partition"
        )
    cpus = max(int(row[1].rstrip("+")) for row in rows)
    gpus = max(_gres_gpus(row[2]) for row in rows)
    return Partition(rows[0][0].rstrip("*"), cpus, gpus)


def _gres_gpus(gres: str) -> int:
    """GPUs in a sinfo %G field such as 'gpu:a100:4(S:0-1),shard:8' ('(null)': none)."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def check_fits(request: dict[str, int], partition: Partition | None) -> None:
    """Refuse a request no node of the partition can run (it would pend forever)."""
    if partition is None:
        return
    if request["gpus_per_node"] > partition.gpus:
        raise SlurmRequestError(
            f"{request['gpus_per_node']} GPU(s) per node requested but the nodes of partition "
            f"{partition.name} have {partition.gpus}; choose a GPU partition "
            "(hydra.launcher.partition=...) or use trainer=cpu"
        )
    cpus = request["cpus_per_task"] * request["tasks_per_node"]
    if cpus > partition.cpus:
        raise SlurmRequestError(
            f"hydra.launcher.cpus_per_task={request['cpus_per_task']} x "
            f"{request['tasks_per_node']} task(s) needs {cpus} CPUs per node but the nodes of "
            f"partition {partition.name} have {partition.cpus}; set hydra.launcher."
            f"cpus_per_task={max(1, partition.cpus // request['tasks_per_node'])} or fewer"
        )


def record_lost_job(job_dir: Path, overrides: list[str], job_id: str, state: str) -> RunResult:
    """results.json of a job SLURM ended without a result (scancel, a signal it did not handle,
    a node failure, a time limit with no requeue left): status failed with SLURM's state, so the
    sweep's summary counts it; a job that had recorded its own outcome keeps it."""
    path = job_dir / RESULTS_FILE
    prior: RunResult = read_results(job_dir) if path.is_file() else {}
    if prior.get("status") in ("completed", "diverged", "failed", "debug"):
        return prior
    result: RunResult = {
        **prior,
        "status": "failed",
        "error": (
            f"SLURM job {job_id} ended {state} without a result (killed from outside: "
            "scancel, a signal, a node failure or its time limit); running the sweep again "
            "resumes it from its last checkpoint"
        ),
        "bad_input": False,
        "output_dir": str(job_dir),
        "overrides": overrides,
        "slurm_job_id": job_id,
    }
    write_results(job_dir, result)
    return result
