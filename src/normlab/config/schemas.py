"""The typed schemas of the training config: every key, its type and its default.

Each config file of conf/model, conf/data, conf/optim, conf/sched, conf/logger and
conf/callbacks is based on one of these
(`defaults: [/<group>_<option>_schema, _self_]`) and states only what differs; the
primary config conf/train.yaml is based on `TrainConfig`. Hydra then refuses an unknown key
and converts or refuses each value by the type declared here, and the builders
(models.registry, data.build, optim) take their valid keys from the same classes.

Field order is the order `python train.py --cfg job` prints. Left open, their keys checked where
they are used: the groups norm (the norm registry) and trainer (Lightning's Trainer arguments;
conf/trainer/_base.yaml holds what cpu and gpu share); the free-form dicts precise_bn.data,
model.timm_kwargs and callbacks.extra (the user's callbacks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import II, MISSING


# --------------------------------------------------------------------------------- model
@dataclass
class ResNetConfig:
    """normlab's ResNets (`model=resnet20|resnet56|resnet110|resnet18|resnet50`)."""

    source: str = "normlab"
    name: str = MISSING  # the layout, one of models.registry.RESNETS
    # pre-activation blocks (He et al., 2016b): every norm feeds an activation
    preact: bool = False
    # zero the last norm of each residual branch (pre-act: its last conv)
    zero_init_last: bool = False
    # weight-standardized convolutions (Qiao et al., 2019), e.g. with norm=gn
    weight_standardization: bool = False
    # auto: CIFAR stem (3x3, stride 1) for inputs <= 64 px, else ImageNet stem
    stem: str = "auto"
    activation: str = "relu"
    # null: the architecture's own (A zero-pad, B 1x1 projection)
    shortcut: str | None = None
    # weights and inputs in channels_last memory layout (faster convolutions, same numbers)
    channels_last: bool = False


@dataclass
class TimmConfig:
    """Any timm backbone, every norm layer built by normlab (`model=timm model.name=...`)."""

    source: str = "timm"
    name: str = "resnet50"
    activation: str = "relu"
    # extra keyword arguments for timm.create_model (+model.timm_kwargs.<arg>=...)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    # weights and inputs in channels_last memory layout (faster convolutions, same numbers)
    channels_last: bool = False


# ---------------------------------------------------------------------------------- data
@dataclass
class LoaderConfig:
    """The loader keys every data set takes (they follow the data set's own keys)."""

    num_workers: int = 0
    # a seeded random subset of the training set (null: all)
    train_samples: int | None = None
    # likewise for the validation set
    val_samples: int | None = None
    # validation batch size (top-level eval_batch_size)
    eval_batch_size: int | None = II("eval_batch_size")
    # training samples kept out of training, for choosing eval_alpha (scripts/choose_alpha.py)
    holdout_samples: int = 0


@dataclass
class ShiftConfig:
    """A shifted domain (in-memory data sets only), usually set through precise_bn.data
    (`+precise_bn.data.corruption=gaussian_noise`); not among a data file's keys."""

    corruption: str | None = None
    severity: int = 3


# A data set's schema lists its own keys in a mixin and inherits (LoaderConfig, mixin): a
# dataclass lays out the fields of its bases in reverse MRO order, so the data set's keys come
# first and the loader keys after them, as `--cfg job` has always printed them.
@dataclass
class _DigitsKeys:
    name: str = "digits"
    image_size: int = 16
    val_fraction: float = 0.2
    augment: bool = True  # random shifts


@dataclass
class DigitsConfig(LoaderConfig, _DigitsKeys):
    """scikit-learn's bundled handwritten digits, upsampled (`data=digits`)."""


@dataclass
class _CifarKeys:
    name: str = MISSING  # cifar10 or cifar100
    root: str = "data/cifar"
    download: bool = False  # fetch into root when online
    augment: bool = True  # 4-pixel padded random crops and horizontal flips


@dataclass
class CifarConfig(LoaderConfig, _CifarKeys):
    """CIFAR-10/100 in torchvision's format under root (`data=cifar10|cifar100`)."""


@dataclass
class _FolderKeys:
    name: str = "folder"
    root: str | None = None
    # cifar: decode once into a cached tensor; imagenet: stream with random-resized crops; none
    augment: str = "cifar"
    image_size: int = 224  # used by augment=imagenet
    cache_dir: str | None = None  # where decoded tensors are cached (default .cache/decoded)


@dataclass
class FolderConfig(LoaderConfig, _FolderKeys):
    """Any ImageFolder tree: root/train and root/val or root/test (`data=folder|imagenet`; the
    name a run records is data.name: folder, or imagenet for conf/data/imagenet.yaml)."""


@dataclass
class _SyntheticKeys:
    name: str = "synthetic"
    num_samples: int = 2048
    num_classes: int = 10
    image_size: int = 32
    channels: int = 3


@dataclass
class SyntheticConfig(LoaderConfig, _SyntheticKeys):
    """Random images and labels, for throughput measurements (`data=synthetic`)."""


# --------------------------------------------------------------------------------- optim
@dataclass
class OptimConfig:
    """The keys every optimizer config has, and `optim=custom` as it is: any optimizer class by
    `optim._target_`, its own arguments added with `+optim.<arg>=...`.

    normlab.job.optim.build_optimizer builds the optimizer with `hydra.utils.instantiate` (always
    `_partial_`), over normlab's parameter groups, from every key but normlab's own
    (OPTIM_OWN_KEYS: lr, ref_batch_size, weight_decay, norm_weight_decay), which it reads itself:
    the class gets lr scaled by the linear scaling rule, and weight_decay per parameter group."""

    _target_: str = MISSING  # an optimizer class by import path, e.g. torch.optim.RMSprop
    _partial_: bool = True  # instantiate gives the constructor, called with the parameter groups
    lr: float = MISSING  # the rate at ref_batch_size: the run uses lr * global_batch / ref
    ref_batch_size: int | None = 256  # null: no scaling
    weight_decay: float = 0.0
    # norm gamma/beta: false (no decay), true (toward 0), toward_one (gamma to 1, beta to 0)
    norm_weight_decay: bool | str = False


# The keys of OptimConfig normlab reads itself: never passed to the optimizer class as they are.
OPTIM_OWN_KEYS = ("lr", "ref_batch_size", "weight_decay", "norm_weight_decay")


@dataclass
class SGDConfig(OptimConfig):
    """SGD with (Nesterov) momentum (`optim=sgd`): torch.optim.SGD over normlab's groups."""

    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    weight_decay: float = 5.0e-4
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamWConfig(OptimConfig):
    """AdamW (Loshchilov & Hutter, 2019) (`optim=adamw`); `_target_` may name any optimizer."""

    _target_: str = "torch.optim.AdamW"
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8


# --------------------------------------------------------------------------------- sched
@dataclass
class CosineConfig:
    """Cosine decay to min_lr_ratio * lr after a linear warm-up (`sched=cosine`)."""

    name: str = "cosine"
    # linear warm-up in epochs, per optimizer step, capped at a fifth of the run
    warmup_epochs: int | float = 1
    min_lr_ratio: float = 0.0


@dataclass
class StepConfig:
    """Multiply the rate by gamma at each milestone epoch, after a warm-up (`sched=step`)."""

    name: str = "step"
    warmup_epochs: int | float = 0
    # epochs, int or float (list[Any]: OmegaConf hands out a list's Union elements as nodes)
    milestones: list[Any] = field(default_factory=lambda: [100, 150])
    gamma: float = 0.1


# -------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    """The metric sinks, each on or off (`logger=csv|tensorboard|none`): the CSV file
    <run folder>/csv/metrics.csv, TensorBoard event files, W&B (logger=wandb: its own keys)."""

    csv: bool = True
    tensorboard: bool = False
    wandb: bool = False


@dataclass
class WandbLoggerConfig(LoggerConfig):
    """Weights & Biases beside the CSV file (`logger=wandb`), conf/logger/wandb.yaml."""

    wandb: bool = True
    project: str = "normlab"
    entity: str | None = None  # your W&B user or team (null: the key's default entity)
    group: str | None = None  # null: one group per sweep (the sweep folder's name)
    mode: str | None = None  # online | offline | disabled; null follows WANDB_MODE
    init_timeout: int | float = 30  # seconds before a W&B start that cannot connect gives up


# ----------------------------------------------------------------------------- callbacks
@dataclass
class CheckpointConfig:
    """normlab's checkpoints in <run folder>/checkpoints (normlab.job.callbacks)."""

    enabled: bool = True  # false: no checkpoint at all
    save_best: bool = True  # best.ckpt, by val/acc
    save_last: bool = True  # last.ckpt, what a resumed run continues from


@dataclass
class CallbacksConfig:
    """normlab's own callbacks and the user's (`callbacks=default`)."""

    progress: str = "rich"  # rich, tqdm or none
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # any other Lightning callback by name: {_target_: <class>, <argument>: ...} (or null: off),
    # left open, its entries checked when they are instantiated (normlab.job.callbacks.extra_callbacks)
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- top level
@dataclass
class DivergenceConfig:
    # a NaN/inf loss or one above this stops the run with status 'diverged'
    loss_threshold: float = 1.0e4


@dataclass
class DebugConfig:
    """The keys of the `debug` group (conf/debug, each file `# @package _global_`): `debug=fdr|
    limit|overfit|profiler` shrink or instrument a run to check that it works, and the run is
    recorded with status 'debug', never averaged into a report; `debug=none` is a real run."""

    # stop cleanly after N epochs, as if preempted (status 'interrupted'; tests resume)
    stop_after_epochs: int | None = None
    # the conf/debug option that set this run up, written by its file (null: a real run)
    option: str | None = None


@dataclass
class PreciseBNConfig:
    """Population statistics of batch-dependent layers (Rethinking BN; Four Things),
    docs/methods.md, "Population statistics and inference"."""

    # 0: keep the EMA running statistics; N > 0: PreciseBN over N training samples before each
    # evaluation
    num_samples: int = 0
    # estimation batch size (the training batch size unless studying that effect)
    batch_size: int = II("batch_size")
    # also evaluate, after every epoch, with PreciseBN over each of these sample counts, from the
    # same weights, keeping the run's own statistics (Rethinking BN's EMA-vs-PreciseBN on one
    # model): history val/acc_precise_bn_<N>, results.json precise_bn_compare, a report row each
    compare_samples: list[int] = field(default_factory=list)
    # changes to the data config for a shifted domain, e.g.
    # +precise_bn.data.corruption=gaussian_noise: at the end the run reports shifted accuracy
    # with source and re-estimated statistics
    data: dict[str, Any] = field(default_factory=dict)
    # samples used to re-estimate statistics on the shifted domain
    target_samples: int = 10000


@dataclass
class FrozenBNConfig:
    last_epochs: int = 0  # train the final k epochs with population statistics (FrozenBN)
    freeze_affine: bool = False  # also freeze gamma/beta of the batch-dependent layers then


@dataclass
class DiagnosticsConfig:
    """Activation / gradient / failure-mode diagnostics on a fixed probe batch
    (docs/methods.md, "Diagnostics")."""

    every_n_epochs: int = 0  # 0: off (no cost)
    probe_size: int = 64


@dataclass
class TrainConfig:
    """The top level of a training job (conf/train.yaml, whose defaults list fills the groups)."""

    # samples per device per step: what a plain BatchNorm normalizes over
    batch_size: int = 32
    # k: run k DDP ranks of batch_size each in this process (steps of batch_size x k; README
    # "Virtual devices")
    virtual_devices: int = 1
    # seeds torch, numpy, Python and data-loader workers
    seed: int = 0
    # torch threads per process; null: the cores this job owns (affinity, SLURM, submitit_local
    # share)
    threads: int | None = None
    # print the composed config as a tree at start
    print_config: bool = True
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    # a run folder that already holds checkpoints/last.ckpt continues from it (requeue)
    resume: bool = True
    # 'last' (this run folder's checkpoints/last.ckpt) or a .ckpt file to resume from
    ckpt_path: str | None = None
    debug: DebugConfig = field(default_factory=DebugConfig)
    precise_bn: PreciseBNConfig = field(default_factory=PreciseBNConfig)
    frozen_bn: FrozenBNConfig = field(default_factory=FrozenBNConfig)
    # evaluate with population statistics, or with each evaluation batch's own (batch)
    eval_stats: str = "population"
    # example-weighed inference (Summers & Dinneen): 0 = plain population statistics
    eval_alpha: float = 0.0
    # validation batch size (null: max(batch_size, 128)); matters for eval_stats=batch
    eval_batch_size: int | None = None
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    # the paper preset this job belongs to (set by conf/experiment/<preset>.yaml; the report
    # puts that paper's published numbers beside the results)
    preset: str | None = None
    # committed run records (<folder>/<preset>.jsonl, relative to where the command runs): a
    # sweep job of a preset whose exact settings a finished record holds is not run again, its
    # record is written into its folder (null: run every job)
    published_records: str | None = "docs/results/runs"
    # The config groups, filled by conf/train.yaml's defaults list: model, data, optim, sched,
    # logger and callbacks from the schemas above, norm and trainer open.
    norm: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Any = MISSING


TRAIN_SCHEMA = "train_schema"  # conf/train.yaml's base
# `/<group>_<option>_schema`: the base a config file of a typed group names in its defaults
# (stored at the root of the ConfigStore, not as a group, so that --help lists no schema group).
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"resnet": ResNetConfig, "timm": TimmConfig},
    "data": {
        "digits": DigitsConfig,
        "cifar": CifarConfig,
        "folder": FolderConfig,
        "synthetic": SyntheticConfig,
    },
    "optim": {"sgd": SGDConfig, "adamw": AdamWConfig, "custom": OptimConfig},
    "sched": {"cosine": CosineConfig, "step": StepConfig},
    "logger": {"local": LoggerConfig, "wandb": WandbLoggerConfig},
    "callbacks": {"default": CallbacksConfig},
}
# What the builders check a plain mapping against: models by model.source, data by data.name.
MODEL_SCHEMAS: dict[str, type] = {"normlab": ResNetConfig, "timm": TimmConfig}
DATA_SCHEMAS: dict[str, type] = {
    "digits": DigitsConfig,
    "cifar10": CifarConfig,
    "cifar100": CifarConfig,
    "folder": FolderConfig,
    "imagenet": FolderConfig,  # data=imagenet: an ImageFolder tree, recorded as imagenet
    "synthetic": SyntheticConfig,
}


def field_names(*schemas: type) -> list[str]:
    """The keys of `schemas`, in order, each once."""
    return list(dict.fromkeys(f.name for schema in schemas for f in fields(schema)))


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (again is harmless): `train_schema` and
    `<group>_<option>_schema`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name=TRAIN_SCHEMA, node=TrainConfig, provider="normlab")
    for group, options in GROUP_SCHEMAS.items():
        for option, schema in options.items():
            store.store(name=f"{group}_{option}_schema", node=schema, provider="normlab")
