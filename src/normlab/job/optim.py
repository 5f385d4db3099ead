"""Optimizer parameter groups, the optimizer `optim` names, the linear scaling rule and warm-up
schedules."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING, Container, OmegaConf
from torch import nn

from normlab.config.schemas import (
    GROUP_SCHEMAS,
    OPTIM_OWN_KEYS,
    CosineConfig,
    OptimConfig,
    StepConfig,
)
from normlab.norms import is_norm_layer


def scaled_lr(base_lr: float, global_batch_size: int, ref_batch_size: int | None) -> float:
    """Linear scaling rule (Goyal et al.): `base_lr` holds at `ref_batch_size`."""
    if not ref_batch_size:
        return base_lr
    return base_lr * global_batch_size / ref_batch_size


NORM_WEIGHT_DECAY_CHOICES = ("false", "true", "toward_one")


@dataclass
class ParameterSplit:
    """The model's trainable parameters by how weight decay treats them."""

    weights: list[nn.Parameter] = field(default_factory=list)  # conv / linear weights
    biases: list[nn.Parameter] = field(default_factory=list)  # biases outside norm layers
    norm_scales: list[nn.Parameter] = field(default_factory=list)  # gamma of norm layers
    norm_other: list[nn.Parameter] = field(default_factory=list)  # beta and other norm parameters
    proxy: list[nn.Parameter] = field(default_factory=list)  # Proxy Norm's proxy parameters


def split_parameters(model: nn.Module) -> ParameterSplit:
    """Sort parameters: norm parameters are those owned by normlab norm layers; a norm layer's
    own `weight` is its scale gamma; `proxy_parameters()` of a layer (Proxy Norm) go apart."""
    split = ParameterSplit()
    scale_ids: set[int] = set()
    norm_ids: set[int] = set()
    proxy_ids: set[int] = set()
    for module in model.modules():
        if not is_norm_layer(module):
            continue
        norm_ids.update(id(p) for p in module.parameters())
        for layer in module.modules():
            weight = layer._parameters.get("weight") if is_norm_layer(layer) else None
            if weight is not None:
                scale_ids.add(id(weight))
            if hasattr(layer, "proxy_parameters"):
                proxy_ids.update(id(p) for p in layer.proxy_parameters())
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in proxy_ids:
            split.proxy.append(param)
        elif id(param) in scale_ids:
            split.norm_scales.append(param)
        elif id(param) in norm_ids:
            split.norm_other.append(param)
        elif param.ndim <= 1:
            split.biases.append(param)
        else:
            split.weights.append(param)
    return split


def parse_norm_weight_decay(value: object) -> str:
    """`optim.norm_weight_decay` as one of false, true, toward_one."""
    text = str(value).lower()
    if text not in NORM_WEIGHT_DECAY_CHOICES:
        raise ValueError(
            f"optim.norm_weight_decay must be one of {', '.join(NORM_WEIGHT_DECAY_CHOICES)}, got {value!r}"
        )
    return text


def build_param_groups(
    model: nn.Module, weight_decay: float, norm_weight_decay: object
) -> list[dict[str, Any]]:
    """Decay conv/linear weights and Proxy Norm's proxy parameters; never plain biases; norm
    gamma/beta not at all (false), toward 0 (true) or gamma toward 1 and beta toward 0
    (toward_one, Summers & Dinneen 2020)."""
    mode = parse_norm_weight_decay(norm_weight_decay)
    split = split_parameters(model)
    norm_decay = 0.0 if mode == "false" else weight_decay
    groups: list[dict[str, Any]] = [
        {"params": split.weights, "weight_decay": weight_decay, "group": "weights"},
        {"params": split.biases, "weight_decay": 0.0, "group": "biases"},
        {"params": split.proxy, "weight_decay": weight_decay, "group": "proxy"},
        {"params": split.norm_other, "weight_decay": norm_decay, "group": "norm"},
    ]
    if mode == "toward_one":
        groups.append(
            {
                "params": split.norm_scales,
                "weight_decay": 0.0,
                "target_weight_decay": weight_decay,
                "decay_target": 1.0,
                "group": "norm_scale",
            }
        )
    else:
        groups.append(
            {"params": split.norm_scales, "weight_decay": norm_decay, "group": "norm_scale"}
        )
    return [g for g in groups if g["params"]]


class DecayTargets:
    """Mixin over a torch optimizer class (`with_decay_targets`): parameter groups with a
    `decay_target` decay toward it instead of 0 with strength `target_weight_decay`, and a flag
    on the device can skip whole steps (`skip_steps_when`, normlab's divergence guard).

    The decay toward the target is L2 like torch's `weight_decay`: added to the gradient
    (`target_weight_decay * (p - target)`), or, in groups whose decay is decoupled (AdamW),
    applied to the parameter as AdamW applies its own (`p -= lr * decay * (p - target)`).
    A closure (Lightning passes one that computes the gradients) runs first.
    """

    param_groups: list[dict[str, Any]]

    def skip_steps_when(self, found_inf: torch.Tensor) -> None:
        """Skip every step (weights, optimizer state) while `found_inf` is 1. SGD, Adam and AdamW
        read the flag on the device in their fused kernels, as under AMP's GradScaler; other
        optimizers read it back on the host once per step."""
        if isinstance(self, FUSED_GUARD):
            for group in self.param_groups:
                group["fused"] = True
                group["foreach"] = None
            self.found_inf = found_inf.view(())  # the kernels read it by this name
        else:
            self._skip_flag = found_inf

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flag = getattr(self, "_skip_flag", None)
        if flag is not None and bool(flag.any()):
            return loss
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            target = group.get("decay_target")
            decay = group.get("target_weight_decay", 0.0)
            if target is None or not decay:
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if group.get("decoupled_weight_decay", False):
                pull = group["lr"] * decay
                for param in params:
                    step = (param - target) * pull
                    param.sub_(step if found_inf is None else step * (1 - found_inf))
            else:
                for param in params:
                    param.grad.add_(param - target, alpha=decay)
        super().step()  # type: ignore[misc]
        return loss


FUSED_GUARD = (torch.optim.SGD, torch.optim.Adam)  # (AdamW is an Adam)


class SGDWithDecayTargets(DecayTargets, torch.optim.SGD):
    """torch.optim.SGD with decay targets and the step guard: `optim=sgd`."""


@functools.cache
def with_decay_targets(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`cls` with DecayTargets mixed in (one class per optimizer class)."""
    if cls is torch.optim.SGD:
        return SGDWithDecayTargets
    return type(f"{cls.__name__}WithDecayTargets", (DecayTargets, cls), {"__module__": __name__})


# optim.name of configs from before `_target_` (a plain mapping without `_target_` may still name
# its optimizer so): the class it stands for
OPTIMIZERS = {"sgd": "torch.optim.SGD"}
# normlab's own keys (config.schemas.OPTIM_OWN_KEYS) and `name`: read by normlab, never passed to
# the optimizer class as they are; Hydra's instantiation flags normlab sets itself
NOT_ARGUMENTS = ("name", *OPTIM_OWN_KEYS, "_partial_", "_convert_")
# a plain mapping (not composed by Hydra) may leave out normlab's keys: OptimConfig's defaults
OWN_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(OptimConfig)
    if f.name in OPTIM_OWN_KEYS and f.default is not MISSING
}


def optimizer_target(optim_cfg: Mapping[str, Any]) -> str:
    """The import path of the optimizer class `optim._target_` names, else (a mapping from
    before `_target_`) the one `optim.name` names."""
    target = optim_cfg.get("_target_")
    if target:
        return str(target)
    name = optim_cfg.get("name")
    if name is None:
        raise ValueError(
            "optim._target_ must name an optimizer class, e.g. optim._target_=torch.optim.SGD"
        )
    if name not in OPTIMIZERS:
        raise ValueError(
            f"optim.name must be {' or '.join(OPTIMIZERS)}, got '{name}' (any other "
            "optimizer: optim._target_=<class>, as conf/optim/adamw.yaml does)"
        )
    return OPTIMIZERS[name]


def optimizer_factory(optim_cfg: Mapping[str, Any], lr: float) -> functools.partial:
    """The optimizer constructor `optim_cfg` describes, awaiting only the parameters: `hydra.utils.
    instantiate` of the config with `_partial_` set, at learning rate `lr` (the scaled rate, in
    place of optim.lr), without normlab's own keys (NOT_ARGUMENTS). A bad `_target_` or an
    argument the class does not take is one line naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    values = _plain(optim_cfg) if isinstance(optim_cfg, Container) else dict(optim_cfg)
    target = optimizer_target(values)
    node = {k: v for k, v in values.items() if k not in NOT_ARGUMENTS}
    node["_target_"] = target
    try:
        factory = instantiate(node, _partial_=True, _convert_="all", lr=lr)
    except InstantiationException as error:
        cause = error.__cause__ or error
        reason = " ".join(str(cause).split()) or type(cause).__name__
        failed = "cannot be imported" if isinstance(cause, ImportError) else "cannot be built"
        raise ValueError(f"optim._target_={target} {failed} ({reason})") from None
    cls = factory.func
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"optim._target_={target} is not a torch.optim.Optimizer class")
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(factory.keywords) - set(accepted))
        if unknown:
            valid = ", ".join(k for k in accepted if k not in ("self", "params", "lr"))
            raise ValueError(
                f"optim.{unknown[0]} is no argument of {cls.__module__}.{cls.__name__} "
                f"(its arguments: {valid})"
            )
    return factory


def build_optimizer(
    model: nn.Module, optim_cfg: Mapping[str, Any], lr: float
) -> torch.optim.Optimizer:
    """normlab's parameter groups (build_param_groups) under the optimizer `optim_cfg` describes
    (optimizer_factory: `hydra.utils.instantiate`, `_partial_`), at learning rate `lr`, its
    class with decay targets and the step guard mixed in (with_decay_targets)."""
    values = _plain(optim_cfg) if isinstance(optim_cfg, Container) else dict(optim_cfg)
    factory = optimizer_factory(values, lr)
    own = {**OWN_DEFAULTS, **{k: v for k, v in values.items() if k in OPTIM_OWN_KEYS}}
    groups = build_param_groups(model, float(own["weight_decay"]), own["norm_weight_decay"])
    # the partial's class with DecayTargets mixed in, called as the partial would be
    return with_decay_targets(factory.func)(groups, *factory.args, **factory.keywords)


def _plain(value: Any) -> Any:
    """A config value as plain Python (lists and dicts, not OmegaConf containers)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def schedule_settings(sched_cfg: Mapping[str, Any]) -> CosineConfig | StepConfig:
    """The `sched` group's settings as its schema declares them: the schema is the one place a
    default lives (a key not given takes the schema's value); an unknown schedule or key is
    one line naming the valid ones."""
    schemas: dict[str, type] = GROUP_SCHEMAS["sched"]
    name = sched_cfg.get("name")
    if name not in schemas:
        raise ValueError(f"sched.name must be one of {', '.join(schemas)}, got '{name}'")
    values = _plain(sched_cfg) if isinstance(sched_cfg, Container) else dict(sched_cfg)
    known = {f.name for f in dataclasses.fields(schemas[name])}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"sched.{unknown[0]} is no key of sched={name} (keys: {', '.join(sorted(known))})"
        )
    return schemas[name](**values)


def lr_lambda(
    sched_cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int
) -> Callable[[int], float]:
    """Multiplier of the base rate per optimizer step: linear warm-up (at most a fifth of the
    run), then cosine or step decay."""
    sched = schedule_settings(sched_cfg)
    # Warm-up is capped at a fifth of the run, so one-epoch runs still decay.
    warmup = min(int(round(float(sched.warmup_epochs) * steps_per_epoch)), total_steps // 5)

    def warming(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    if isinstance(sched, StepConfig):
        milestones = [int(round(e * steps_per_epoch)) for e in sched.milestones]
        gamma = float(sched.gamma)

        def step_factor(step: int) -> float:
            warm = warming(step)
            return warm if warm is not None else gamma ** sum(step >= m for m in milestones)

        return step_factor
    final = float(sched.min_lr_ratio)

    def cosine_factor(step: int) -> float:
        warm = warming(step)
        if warm is not None:
            return warm
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return cosine_factor
