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


def _projection(
    in_ch: int, out_ch: int, stride: int, shortcut: str, norm: NormFactory, conv: ConvFactory
) -> nn.Module:
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    if shortcut == "A":
        return PadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(conv(in_ch, out_ch, 1, stride), norm(out_ch, None))


class BasicBlock(nn.Module):
    """Two 3x3 convs, post-activation: conv-norm-act-conv-norm, add, act."""

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
        self.conv1 = conv(in_ch, width, 3, stride)
        self.norm1 = norm(width, activation)
        self.conv2 = conv(width, out_ch, 3, 1)
        self.norm2 = norm(out_ch, None)
        self.shortcut = _projection(in_ch, out_ch, stride, shortcut, norm, conv)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(x))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))

    def zero_init_last(self) -> None:
        zero_init_norm_(self.norm2)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck (torchvision v1.5: stride on the 3x3), post-activation."""

    expansion = 4

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
        self.conv1 = conv(in_ch, width, 1, 1)
        self.norm1 = norm(width, activation)
        self.conv2 = conv(width, width, 3, stride)
        self.norm2 = norm(width, activation)
        self.conv3 = conv(width, out_ch, 1, 1)
        self.norm3 = norm(out_ch, None)
        self.shortcut = _projection(in_ch, out_ch, stride, shortcut, norm, conv)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(x))
        out = self.norm2(self.conv2(out))
        out = self.norm3(self.conv3(out))
        return self.act(out + self.shortcut(x))

    def zero_init_last(self) -> None:
        zero_init_norm_(self.norm3)


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
        self.needs_projection = in_ch != out_ch or stride != 1
        self.pad_shortcut = shortcut == "A"
        if self.needs_projection:
            self.shortcut: nn.Module = (
                PadShortcut(in_ch, out_ch, stride)
                if self.pad_shortcut
                else conv(in_ch, out_ch, 1, stride)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.norm1(x)
        # A projection shortcut sees the pre-activated input (He et al., 2016b).
        skip = (
            self.shortcut(pre)
            if self.needs_projection and not self.pad_shortcut
            else self.shortcut(x)
        )
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
