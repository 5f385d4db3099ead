"""Hydra's submitit_local launcher, sharing the machine's cores among the jobs it starts.

A Hydra plugin (Hydra instantiates launchers only from the hydra_plugins namespace package):
conf/hydra/launcher/submitit_local.yaml names it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

from normlab.runtime import CORES_ENV, cores_per_job


class SharedCoresLocalLauncher(LocalLauncher):
    """submitit_local starts all jobs of a sweep at once and pins no cores; before starting
    them this tells every job its share (`cpus_per_task`, or the cores this process owns divided
    by the number of jobs) through NORMLAB_CPUS_PER_JOB, which normlab.runtime reads."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        share = cores_per_job(len(job_overrides), self.params.get("cpus_per_task"))
        os.environ[CORES_ENV] = str(share)
        return super().launch(job_overrides, initial_job_idx)
