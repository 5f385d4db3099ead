"""The run spec: what a run trains, read from its composed config once.

The norm and its parameters, the per-device batch, the devices emulated in one process
(virtual_devices), the processes that train together, gradient accumulation, the global batch
and the learning rate the linear scaling rule gives for it. `run_spec(cfg)` reads and checks
them once when a run starts; building the run, the results.json axes and the learning-rate
line then read the spec instead of the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normlab.job.optim import scaled_lr
from normlab.platform.environment import world_size


@dataclass(frozen=True)
class RunSpec:
    """A run's norm, batch, devices and learning rate, checked."""

    norm: str
    norm_params: dict[str, Any] = field(hash=False)
    batch_size: int  # per device
    virtual_devices: int  # DDP ranks emulated in each process (1: off)
    world_size: int  # processes that train together
    accumulate: int  # gradient accumulation steps
    base_lr: float  # optim.lr, the rate at ref_batch_size
    ref_batch_size: int | None  # None: no scaling

    @property
    def global_batch(self) -> int:
        """Images per optimizer step: batch x virtual devices x processes x accumulation."""
        return self.batch_size * self.virtual_devices * self.world_size * self.accumulate

    @property
    def lr(self) -> float:
        """The learning rate the run uses: base_lr scaled linearly to the global batch."""
        return scaled_lr(self.base_lr, self.global_batch, self.ref_batch_size)

    def lr_line(self) -> str:
        """The line a run prints so the scaled rate is never a surprise."""
        return (
            f"normlab: learning rate {self.lr:.6g} (optim.lr {self.base_lr} scaled to the "
            f"global batch {self.global_batch}: batch_size {self.batch_size} x virtual_devices "
            f"{self.virtual_devices} x {self.world_size} device(s) x {self.accumulate} "
            f"accumulation / optim.ref_batch_size {self.ref_batch_size})"
        )


def run_spec(cfg: DictConfig) -> RunSpec:
    """The spec of the run `cfg` composes; a ValueError names a bad value. Whether this
    machine has the devices asked for is environment.check_devices's question."""
    name, params = norm_params(cfg.norm)
    ref = cfg.optim.get("ref_batch_size")
    return RunSpec(
        norm=name,
        norm_params=params,
        batch_size=int(cfg.batch_size),
        virtual_devices=virtual_devices(cfg.virtual_devices),
        world_size=world_size(cfg.trainer),
        accumulate=int(cfg.trainer.get("accumulate_grad_batches", 1) or 1),
        base_lr=float(cfg.optim.lr),
        ref_batch_size=None if ref is None else int(ref),
    )


def norm_params(norm_cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """The norm's name and its parameters from the `norm` config group."""
    params = OmegaConf.to_container(norm_cfg, resolve=True)
    assert isinstance(params, dict)
    name = params.pop("name")
    return str(name), {str(k): v for k, v in params.items()}


def virtual_devices(value: Any) -> int:
    """`virtual_devices`, checked: DDP ranks of batch_size emulated in each process (1: off)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"virtual_devices must be an int >= 1 (ranks of batch_size emulated in one process), "
            f"got {value!r}"
        )
    return value
