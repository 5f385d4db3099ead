"""Where a run executes: devices, ranks, SLURM, and the Lightning strategy that follows.

Everything here reads the config's `trainer` group and the launcher's environment; nothing here
builds models or data.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}


def under_slurm() -> bool:
    """Whether this process is a SLURM job (hydra/launcher=slurm, or srun/sbatch directly)."""
    return "SLURM_JOB_ID" in os.environ


def slurm_job_id() -> str:
    """This SLURM job's id as sacct and squeue show it (<array id>_<task> for an array job)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID", "")


def slurm_tasks() -> int:
    """Tasks of this SLURM job step (1 outside SLURM): each task is one rank."""
    return int(os.environ.get("SLURM_NTASKS", "1"))


def process_rank() -> int:
    """This process's global rank from the launcher's environment (0 for a spawn parent)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def device_count(trainer_cfg: DictConfig) -> int:
    """Processes per node: `devices` as a count, a list of ids, or -1/'auto' (all GPUs)."""
    devices = trainer_cfg.get("devices", 1)
    gpu = trainer_cfg.get("accelerator") in ("gpu", "cuda")
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | ListConfig):
        return len(devices)
    if isinstance(devices, str) and devices.strip(",").isdigit():
        return int(devices.strip(","))
    return max(1, torch.cuda.device_count()) if gpu else 1


def world_size(trainer_cfg: DictConfig) -> int:
    """Processes that train together: devices per node x nodes."""
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    return device_count(trainer_cfg) * nodes


def check_devices(trainer_cfg: DictConfig) -> None:
    """Refuse, before any work, more devices than this machine has."""
    accelerator = trainer_cfg.get("accelerator", "cpu")
    wanted = trainer_cfg.get("devices", 1)
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ValueError(
                f"trainer.accelerator={accelerator} but no GPU is visible; "
                "use trainer=cpu or trainer=ddp_cpu"
            )
        if isinstance(wanted, int) and wanted > available:
            raise ValueError(f"trainer.devices={wanted} but only {available} GPU(s) are visible")
    elif accelerator == "cpu" and isinstance(wanted, int) and wanted > (os.cpu_count() or 1):
        raise ValueError(
            f"trainer.devices={wanted} CPU processes but this machine has only "
            f"{os.cpu_count()} CPU cores"
        )


def effective_strategy(strategy: Any) -> Any:
    """`trainer.strategy` as it runs here: under SLURM with several tasks (hydra/launcher=slurm,
    one task per GPU) each task already is one rank, so ddp_spawn becomes ddp: Lightning then
    reads the ranks from SLURM and relaunches nothing."""
    return "ddp" if strategy == "ddp_spawn" and slurm_tasks() > 1 else strategy


def trainer_args(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Lightning Trainer arguments from the `trainer` config, the strategy as
    effective_strategy says; DDP strategies keep each rank's buffers its own (see ddp_strategy)."""
    args = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(args, dict)
    strategy = effective_strategy(args.get("strategy"))
    if strategy in DDP_START_METHODS:
        args["strategy"] = ddp_strategy(str(strategy))
    elif strategy is not None:
        args["strategy"] = strategy
    return {str(k): v for k, v in args.items()}


def ddp_strategy(name: str) -> Any:
    """Lightning's `name` DDP strategy with broadcast_buffers off.

    torch's DDP default copies rank 0's buffers to every rank before each forward, so every
    rank's running statistics would be rank 0's EMA with one update of its own: the
    population statistics would see 1/world of the data, CBN's per-rank windows would be
    overwritten, and normlab's reconciliation (the mean of the per-rank buffers before every
    validation and checkpoint) would average nearly identical copies. Each rank keeps its own
    buffers instead, as each GPU of the papers' multi-GPU runs does, and virtual devices
    emulate exactly that.
    """
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(start_method=DDP_START_METHODS[name], broadcast_buffers=False)


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's own SIGUSR1 requeue is switched off: submitit (the Hydra
    launcher) requeues the job and normlab resumes from checkpoints/last.ckpt, one mechanism."""
    if not under_slurm():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def job_overrides() -> list[str]:
    """This job's command-line overrides as Hydra passed them (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]
