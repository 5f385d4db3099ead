"""The run spec: what a run trains, read from its composed config once.

The norm and its parameters, the per-device batch, the devices emulated in one process
(virtual_devices), the processes that train together, gradient accumulation, the global batch
and the learning rate the linear scaling rule gives for it, with the run's typed settings
(the schema's dataclasses: PreciseBN, FrozenBN, diagnostics, checkpoints, debug). `run_spec(cfg)`
reads and checks them once when a run starts; building the run, its callbacks, the results.json
axes and the learning-rate line then read the spec instead of the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from normlab.config.schemas import (
    CheckpointConfig,
    DebugConfig,
    DiagnosticsConfig,
    FrozenBNConfig,
    PreciseBNConfig,
    field_names,
)
from normlab.job.optim import scaled_lr
from normlab.platform.environment import world_size


@dataclass(frozen=True)
class RunSpec:
    """A run's norm, batch, devices and learning rate, checked, and its typed settings."""

    norm: str
    norm_params: dict[str, Any] = field(hash=False)
    batch_size: int  # per device
    virtual_devices: int  # DDP ranks emulated in each process (1: off)
    world_size: int  # processes that train together
    accumulate: int  # gradient accumulation steps
    base_lr: float  # optim.lr, the rate at ref_batch_size
    ref_batch_size: int | None  # None: no scaling
    seed: int = 0
    eval_stats: str = "population"  # population or batch statistics at evaluation
    eval_alpha: float = 0.0  # example-weighed inference
    precise_bn: PreciseBNConfig = field(default_factory=PreciseBNConfig, compare=False)
    frozen_bn: FrozenBNConfig = field(default_factory=FrozenBNConfig, compare=False)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig, compare=False)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, compare=False)
    progress: str = "rich"  # the progress bar: rich, tqdm or none
    debug: DebugConfig = field(default_factory=DebugConfig, compare=False)

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
        seed=int(cfg.seed),
        eval_stats=str(cfg.eval_stats),
        eval_alpha=float(cfg.eval_alpha),
        precise_bn=typed(PreciseBNConfig, cfg.precise_bn),
        frozen_bn=typed(FrozenBNConfig, cfg.frozen_bn),
        diagnostics=typed(DiagnosticsConfig, cfg.diagnostics),
        checkpoint=typed(CheckpointConfig, cfg.callbacks.checkpoint),
        progress=str(cfg.callbacks.progress),
        debug=typed(DebugConfig, cfg.debug),
    )


Settings = TypeVar("Settings")


def typed(schema: type[Settings], node: DictConfig) -> Settings:
    """`node` as its schema's dataclass. A composed config's node is typed already; a run
    folder's saved config (plain YAML, read by eval.py) is read into the schema, its defaults
    filling keys it lacks and keys the schema no longer has left out, so older runs load."""
    if is_dataclass(OmegaConf.get_type(node)):
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    known = {str(k): v for k, v in values.items() if k in field_names(schema)}
    return schema(**known)


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
