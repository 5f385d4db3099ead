"""normlab's Hydra sweeper: Hydra's basic grid sweeper that refuses a changed grid up front.

Hydra numbers a sweep's jobs in grid order and writes each job's `.hydra/` files into its
folder before the job starts. Run again into the same `hydra.sweep.dir` with another grid, job
N's folder would get the new settings' `.hydra/` beside the old run's results before the job
itself could refuse. This sweeper composes every job whose folder already records a run
(normlab.run_folder) and, when any of them would hold another run, refuses the whole command
in one line per job before anything is launched or written. `resume=false` replaces the old
runs instead (each job clears its folder).
conf/hydra/default.yaml selects it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from normlab.console import error_line
from normlab.platform.sweep import note_planned
from normlab.run_folder import FolderHoldsAnotherRun, RunFolder, fingerprint


class NormlabSweeper(BasicSweeper):
    """BasicSweeper (the same grid, order and batches) with the changed-grid check first."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        grid = self.split_arguments(
            parser.parse_overrides([*self._parse_config(), *arguments]), None
        )
        refusals = self.changed_jobs([list(job) for job in grid[0]])
        if refusals:
            for line in refusals:
                print(error_line(line), file=sys.stderr)
            print(
                f"normlab: error: {len(refusals)} job(s) of this sweep would replace other runs in "
                f"{self.config.hydra.sweep.dir}; nothing was run",
                file=sys.stderr,
            )
            sys.exit(1)
        note_planned(Path(str(self.config.hydra.sweep.dir)), sum(len(batch) for batch in grid))
        return super().sweep(arguments)

    def changed_jobs(self, jobs: list[list[str]]) -> list[str]:
        """One refusal per job whose existing folder holds another run."""
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return []
        refusals = []
        for num, overrides in enumerate(jobs):
            job_cfg = job_config(self.hydra_context, self.config, overrides, num)
            try:
                subdir = OmegaConf.select(job_cfg, "hydra.sweep.subdir", throw_on_missing=True)
            except Exception:  # noqa: BLE001 - a subdir only a launcher can name: the job checks
                continue
            folder = RunFolder(sweep_dir / str(subdir))
            if folder.recorded() is None:
                continue
            with open_dict(job_cfg):
                del job_cfg["hydra"]  # a job's own config, as Hydra hands it to the job
            try:
                folder.same_run(fingerprint(job_cfg), bool(job_cfg.resume))
            except FolderHoldsAnotherRun as error:
                refusals.append(f"job #{num} ({' '.join(overrides)}): {error}")
        return refusals


def job_config(context: Any, master: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """The config job `num` of a sweep runs, Hydra's own settings included, composed as
    Hydra's launchers compose it (`context`: the sweep's HydraContext)."""
    cfg = context.config_loader.load_sweep_config(master, overrides)
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = num
    return cfg
