"""What every normlab norm layer has in common: batch dependence, activation fusing, zero-init."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from normlab.norms.activations import make_activation


class NormLayer(nn.Module):
    """Marker base for normlab norm layers.

    A layer class declares what it is, once, and the registry, the catalog, the callbacks and
    the tests read it there: `batch_dependent` says whether a sample's output in training
    depends on the other samples of the batch (such a layer keeps population statistics,
    normlab.norms.population.PopulationStats; callbacks find their layers by it);
    `fuses_activation` whether the layer applies its activation itself (its builder then takes
    an `activation` keyword); `needs_conv` whether it must be bound to the convolution before it
    (normlab.models.binding).
    """

    batch_dependent: bool = False
    fuses_activation: bool = False
    needs_conv: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Every layer's forward, its own or inherited (GroupNorm's is torch's), runs in float32
        # under autocast; a forward already wrapped higher up is not wrapped again.
        forward = cls.__dict__.get("forward", getattr(cls, "forward", None))
        if callable(forward) and not getattr(forward, FLOAT32_GUARD, False):
            cls.forward = in_float32_under_autocast(forward)

    def _init_affine(self, num_channels: int, bias: bool = True) -> None:
        """The per-channel affine of a normalization layer: weight (gamma) 1 and bias (beta) 0,
        or no bias (None); zero_init_ zeroes the weight."""
        self.weight = nn.Parameter(torch.ones(num_channels))
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("bias", None)

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse, before training starts, a per-device batch this layer cannot normalize."""
        if self.batch_dependent and batch_size < 2:
            raise ValueError(
                f"{type(self).__name__} normalizes over the batch and cannot train with a "
                f"per-device batch of {batch_size}; use batch_size >= 2 or a batch-independent norm"
            )

    def zero_init_(self) -> None:
        """Make the layer's output start at zero (last norm of a residual branch)."""
        weight = getattr(self, "weight", None)
        if isinstance(weight, nn.Parameter):
            nn.init.zeros_(weight)


FLOAT32_GUARD = "_normlab_float32_under_autocast"


def in_float32_under_autocast(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap a norm layer's forward so that, under mixed precision (CPU or CUDA autocast), it
    computes its statistics, normalization and running-buffer updates in float32 and returns
    the autocast dtype: every method alike, whatever its own code does with half inputs.

    Without autocast the forward runs as written (float64 stays float64)."""

    @functools.wraps(forward)
    def guarded(self: nn.Module, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        device = x.device.type
        if not (x.is_floating_point() and torch.is_autocast_enabled(device)):
            return forward(self, x, *args, **kwargs)
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device_type=device, enabled=False):
            out = forward(self, x.float(), *args, **kwargs)
        return out.to(dtype)

    setattr(guarded, FLOAT32_GUARD, True)
    return guarded


class NormAct(NormLayer):
    """A norm layer followed by an activation, for methods that do not fuse the two."""

    def __init__(self, norm: nn.Module, activation: str | None) -> None:
        super().__init__()
        self.norm = norm
        self.act = make_activation(activation)
        self.batch_dependent = bool(getattr(norm, "batch_dependent", False))

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(x))

    def check_batch_size(self, batch_size: int) -> None:
        check = getattr(self.norm, "check_batch_size", None)
        if check is not None:
            check(batch_size)

    def zero_init_(self) -> None:
        zero_init_norm_(self.norm)


def is_norm_layer(module: nn.Module) -> bool:
    """True for modules built by the normlab norm registry."""
    return isinstance(module, NormLayer)


def zero_init_norm_(module: nn.Module) -> None:
    """Zero the scale of a norm layer so its residual branch starts as identity."""
    if isinstance(module, NormLayer):
        module.zero_init_()
    elif isinstance(getattr(module, "weight", None), nn.Parameter):
        nn.init.zeros_(module.weight)


def notify_optimizer_step(model: nn.Module) -> None:
    """Tell the stateful layers of `model` (CBN's window of past iterations) that an optimizer
    step happened; call it after every optimizer.step() outside normlab's LightningModule."""
    for module in model.modules():
        hook = getattr(module, "on_optimizer_step", None)
        if callable(hook):
            hook()
