"""Convolutions and shortcuts shared by the ResNets."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import StdConv2d
from torch import Tensor, nn

ConvFactory = Callable[[int, int, int, int], nn.Conv2d]


def conv_factory(weight_standardization: bool = False) -> ConvFactory:
    """`(in, out, kernel, stride) -> conv` without bias; weight-standardized if asked.

    Weight Standardization (Qiao et al., 2019) uses timm's StdConv2d: each output filter
    is standardized over (C_in, kH, kW) with the biased variance, eps inside the sqrt.
    """

    def make(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
        padding = kernel_size // 2
        if weight_standardization:
            return StdConv2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
            )
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )

    return make


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by `stride` and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


def init_conv_weights_(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions and zero-bias linear layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


@torch.no_grad()
def zero_init_conv_(conv: nn.Conv2d) -> None:
    """Zero a convolution's weights (the last layer of a pre-activation residual branch)."""
    conv.weight.zero_()
