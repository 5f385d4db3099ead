"""normlab's Hydra launchers: submitit_local sharing the machine's cores among the jobs it
starts, and SLURM with requests that follow the trainer and sweeps that survive killed jobs.

A Hydra plugin (Hydra instantiates launchers only from the hydra_plugins namespace package):
conf/hydra/launcher/submitit_local.yaml and slurm.yaml name them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.normlab_sweeper import job_config
from normlab.console import error_line
from normlab.platform.runtime import CORES_ENV, cores_per_job, owned_cores
from normlab.platform.slurm import (
    SlurmRequestError,
    check_fits,
    partition_info,
    record_lost_job,
    slurm_request,
)
from normlab.platform.sweep import note_job, noted_once
from normlab.results import RESULTS_FILE, read_results

log = logging.getLogger(__name__)


class SharedCoresLocalLauncher(LocalLauncher):
    """submitit_local sharing this machine's cores among a sweep's jobs.

    Upstream starts all jobs of a sweep at once and pins no cores. This tells every job its
    share (`cpus_per_task`, or the cores this process owns divided by the jobs running at once)
    through NORMLAB_CPUS_PER_JOB, which normlab.platform.runtime reads; and it runs at most
    `jobs_at_once` jobs at a time, in waves (null: cores // cpus_per_task when cpus_per_task is
    set, e.g. two 1-thread jobs side by side on 2 cores; all at once otherwise)."""

    def __init__(self, **params: Any) -> None:
        self.jobs_at_once: int | None = params.pop("jobs_at_once", None)
        super().__init__(**params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        cpus = self.params.get("cpus_per_task")
        at_once = jobs_at_once(len(job_overrides), self.jobs_at_once, cpus)
        os.environ[CORES_ENV] = str(cores_per_job(at_once, cpus))
        returns: list[Any] = []
        for start in range(0, len(job_overrides), at_once):
            wave = job_overrides[start : start + at_once]
            returns.extend(super().launch(wave, initial_job_idx + start))
        return returns


def jobs_at_once(jobs: int, requested: int | None, cpus_per_task: int | None) -> int:
    """How many of a sweep's `jobs` jobs submitit_local runs side by side."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"hydra.launcher.jobs_at_once must be >= 1 or null, got {requested}")
        return min(jobs, int(requested))
    if cpus_per_task:
        return min(jobs, max(1, owned_cores() // int(cpus_per_task)))
    return jobs


class NormlabSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher, with three changes (normlab.platform.slurm):

    - each job's SLURM request (GPUs, tasks, cores per task, nodes) follows its trainer, the
      launcher's values where given; a contradiction, or a request no node of the partition can
      hold, is refused before anything is submitted;
    - jobs whose requests differ go in separate job arrays;
    - a job that SLURM ends without a result (scancel, a signal it does not handle, a node
      failure) is recorded `failed` with SLURM's state and the sweep waits for the others,
      where the upstream launcher stops the whole sweep at the first such job.
    """

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobReturn, JobStatus

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
        context, master = self.hydra_context, self.config
        configs = {idx: job_config(context, master, overrides, idx) for idx, overrides in jobs}
        partition = partition_info(self.params.get("partition"))
        arrays: dict[tuple[tuple[str, int], ...], list[tuple[int, list[str]]]] = {}
        for idx, overrides in jobs:
            try:
                request = slurm_request(configs[idx], self.params, partition)
                check_fits(request, partition)
            except SlurmRequestError as error:  # one line, nothing submitted
                print(error_line(f"job #{idx} ({' '.join(overrides)}): {error}"), file=sys.stderr)
                sys.exit(2)
            arrays.setdefault(tuple(sorted(request.items())), []).append((idx, overrides))

        submitted = []
        for request, members in arrays.items():
            executor = self._executor(dict(request))
            state = Singleton.get_state()
            calls = [(o, "hydra.sweep.dir", idx, f"job_id_for_{idx}", state) for idx, o in members]
            for (idx, overrides), job in zip(
                members, executor.map_array(self, *zip(*calls, strict=True)), strict=True
            ):
                log.info(f"\t#{idx} : {' '.join(overrides)} (SLURM job {job.job_id})")
                submitted.append((idx, overrides, job))

        returns = {}
        for idx, overrides, job in submitted:
            try:
                returns[idx] = job.results()[0]
            except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError):
                state = job.state
                job_dir = self._job_dir(configs[idx], sweep_dir, overrides)
                record_lost_job(job_dir, overrides, str(job.job_id), state)
                if not noted_once(sweep_dir, idx):  # it never started: this command's all the same
                    note_job(sweep_dir, idx, job_dir, "launched")
                print(
                    f"normlab: SLURM job {job.job_id} (#{idx}: {' '.join(overrides)}) ended "
                    f"{state} without a result; recorded as failed in {job_dir}",
                    flush=True,
                )
                lost = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
                lost.return_value = None
                returns[idx] = lost
        return [returns[idx] for idx, _ in jobs]

    @staticmethod
    def _job_dir(cfg: DictConfig, sweep_dir: Path, overrides: list[str]) -> Path:
        """The job's run folder: hydra.sweep.subdir, or the folder whose results.json names
        these overrides when the subdir needs more than the job number to resolve."""
        try:
            return sweep_dir / str(
                OmegaConf.select(cfg, "hydra.sweep.subdir", throw_on_missing=True)
            )
        except Exception:
            for path in sweep_dir.rglob(RESULTS_FILE):
                if sorted(read_results(path.parent).get("overrides", [])) == sorted(overrides):
                    return path.parent
            raise

    def _executor(self, request: dict[str, int]) -> Any:
        """A submitit SLURM executor with the launcher's parameters and this request."""
        import submitit

        params = {**self.params, **request}
        if not params.get("gpus_per_node"):
            params["gpus_per_node"] = None  # no --gpus-per-node line (a CPU partition)
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        common = set(BaseQueueConf.__dataclass_fields__)
        executor.update_parameters(
            **{key if key in common else f"slurm_{key}": value for key, value in params.items()}
        )
        return executor
