"""ResNets built from a norm factory: CIFAR ResNet-20/56/110 (He et al., 2016), their
pre-activation variants (He et al., 2016b), and ResNet-18/50 in torchvision's layout.

Every norm layer comes from `norm(num_channels, activation)`, so a method that acts after
the activation (Proxy Norm) receives the activation it precedes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from normlab.models.layers import (
    ConvFactory,
    PadShortcut,
    init_conv_weights_,
    zero_init_conv_,
)
from normlab.norms import NormFactory, zero_init_norm_
from normlab.norms.activations import make_activation


def _shortcut(
    in_ch: int,
    out_ch: int,
    stride: int,
    kind: str,
    conv: ConvFactory,
    norm: NormFactory | None,
) -> nn.Module:
    """Identity where the shape is kept; else option `kind` A (subsample, zero-pad) or B (a
    1x1 projection, followed by a norm unless `norm` is None)."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(in_ch, out_ch, stride)
    projection = conv(in_ch, out_ch, 1, stride)
    return projection if norm is None else nn.Sequential(projection, norm(out_ch, None))


class _PostActivationBlock(nn.Module):
    """A post-activation residual block: conv-norm pairs conv1/norm1, conv2/norm2, ... (each
    norm with the activation but the last), added to the shortcut, then the activation.

    Subclasses give `expansion` and `convs`, the pairs' convolutions; the modules are created
    and registered in the order conv1, norm1, conv2, ..., shortcut, act (the state_dict keys
    and the random initialization follow it)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        norm: NormFactory,
        conv: ConvFactory,
        activation: str,
        shortcut: str,
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        convs = self.convs(in_ch, width, out_ch, stride)
        self.num_convs = len(convs)
        for index, (conv_in, conv_out, kernel, conv_stride) in enumerate(convs, start=1):
            setattr(self, f"conv{index}", conv(conv_in, conv_out, kernel, conv_stride))
            last = index == self.num_convs
            setattr(self, f"norm{index}", norm(conv_out, None if last else activation))
        self.shortcut = _shortcut(in_ch, out_ch, stride, shortcut, conv, norm)
        self.act = make_activation(activation)

    @staticmethod
    def convs(in_ch: int, width: int, out_ch: int, stride: int) -> list[tuple[int, int, int, int]]:
        """(in channels, out channels, kernel size, stride) of each convolution of the branch."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for index in range(1, self.num_convs + 1):
            out = getattr(self, f"norm{index}")(getattr(self, f"conv{index}")(out))
        return self.act(out + self.shortcut(x))

    def zero_init_last(self) -> None:
        zero_init_norm_(getattr(self, f"norm{self.num_convs}"))


class BasicBlock(_PostActivationBlock):
    """Two 3x3 convs, post-activation: conv-norm-act-conv-norm, add, act."""

    expansion = 1

    @staticmethod
    def convs(in_ch: int, width: int, out_ch: int, stride: int) -> list[tuple[int, int, int, int]]:
        return [(in_ch, width, 3, stride), (width, out_ch, 3, 1)]


class Bottleneck(_PostActivationBlock):
    """1x1-3x3-1x1 bottleneck (torchvision v1.5: stride on the 3x3), post-activation."""

    expansion = 4

    @staticmethod
    def convs(in_ch: int, width: int, out_ch: int, stride: int) -> list[tuple[int, int, int, int]]:
        return [(in_ch, width, 1, 1), (width, width, 3, stride), (width, out_ch, 1, 1)]


class PreActBasicBlock(nn.Module):
    """Pre-activation block: norm-act-conv-norm-act-conv, add; every norm feeds an activation."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        norm: NormFactory,
        conv: ConvFactory,
        activation: str,
        shortcut: str,
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.norm1 = norm(in_ch, activation)
        self.conv1 = conv(in_ch, width, 3, stride)
        self.norm2 = norm(width, activation)
        self.conv2 = conv(width, out_ch, 3, 1)
        self.shortcut = _shortcut(in_ch, out_ch, stride, shortcut, conv, norm=None)
        # A projection shortcut sees the pre-activated input (He et al., 2016b).
        self.shortcut_sees_preactivation = isinstance(self.shortcut, nn.Conv2d)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.norm1(x)
        skip = self.shortcut(pre if self.shortcut_sees_preactivation else x)
        out = self.conv1(pre)
        out = self.conv2(self.norm2(out))
        return out + skip

    def zero_init_last(self) -> None:
        # The branch ends in a conv, not a norm: zero it so the block starts as identity.
        zero_init_conv_(self.conv2)


class ResNet(nn.Module):
    """A ResNet of `block`s in stages; CIFAR stem (3x3, stride 1) or ImageNet stem (7x7/2 + pool)."""

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        norm: NormFactory,
        conv: ConvFactory,
        *,
        in_channels: int = 3,
        stem: str = "cifar",
        stem_width: int | None = None,
        activation: str = "relu",
        shortcut: str = "B",
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got '{stem}'")
        if shortcut not in ("A", "B"):
            raise ValueError(
                f"shortcut must be 'A' (zero-pad) or 'B' (1x1 projection), got '{shortcut}'"
            )
        preact = block is PreActBasicBlock
        stem_width = stem_width or widths[0]
        layers: list[nn.Module] = []
        if stem == "cifar":
            layers.append(conv(in_channels, stem_width, 3, 1))
        else:
            layers.append(conv(in_channels, stem_width, 7, 2))
        if not preact:
            layers.append(norm(stem_width, activation))
        if stem == "imagenet":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*layers)

        stages: list[nn.Module] = []
        channels = stem_width
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks: list[nn.Module] = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(channels, width, stride, norm, conv, activation, shortcut))
                channels = width * block.expansion  # type: ignore[attr-defined]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final_norm = norm(channels, activation) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels

        init_conv_weights_(self)
        if zero_init_last:
            for module in self.modules():
                if hasattr(module, "zero_init_last"):
                    module.zero_init_last()

    def forward_features(self, x: Tensor) -> Tensor:
        """Features before pooling."""
        return self.final_norm(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))
