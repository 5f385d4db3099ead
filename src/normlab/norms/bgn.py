"""Batch Group Normalization (Zhou et al., arXiv 2012.02782).

The (C, H, W) axes are merged and split into G groups; each group is normalized with statistics
over the batch and the group's elements, i.e. BN over a (N, G, C/G*H*W) view, followed by a
per-channel affine. Running statistics are per group (torch BN EMA, unbiased running variance).
Only G <= C with G | C is supported (groups of whole channels), so G = C is exactly BN and the
evaluation transform stays a foldable per-channel affine. Under virtual devices each chunk of
`virtual_batch_size` samples is normalized on its own (normlab.norms.virtual).
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.norms.batch import BatchNormByMode
from normlab.norms.checks import check_eps, check_groups, check_momentum
from normlab.norms.population import PopulationNorm
from normlab.norms.registry import register_norm


class ChannelGroupBatchNorm2d(PopulationNorm, BatchNormByMode):
    """Zhou's Batch Group Normalization (norm=bgn): BN whose statistics are per group of
    channels over the whole batch, i.e. over (N, G, C/G*H*W), with per-group running
    statistics and a per-channel affine. (Unlike ExampleChannelGroupNorm2d, norm=batch_group,
    whose statistics are per group of examples as well.)"""

    def __init__(self, num_channels: int, groups: int, momentum: float | None, eps: float) -> None:
        super().__init__(num_channels, groups, momentum, eps)
        self.groups = groups

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, groups={self.groups}, momentum={self.momentum}, eps={self.eps}"
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.batch_norm(x.reshape(x.shape[0], self.groups, -1), None, None).reshape_as(x)
        shape = (1, -1, 1, 1)
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape)).to(x.dtype)


@register_norm(
    "bgn",
    summary="Batch Group Norm (Zhou et al. 2020): BN over channel groups; G must divide C",
    test_params={"groups": 2},
)
def build_bgn(
    num_channels: int, *, groups: int = 8, momentum: float | None = 0.1, eps: float = 1e-5
) -> ChannelGroupBatchNorm2d:
    """Batch Group Normalization (Zhou et al., arXiv 2012.02782): BN over G groups of the merged
    C*H*W axis, per-group running statistics (momentum 0.1), per-channel affine. Only G | C is
    supported; G = C is exactly BN. Default G=8 (divides the 16/32/64 channels of CIFAR
    ResNet-20)."""
    check_groups("bgn", num_channels, groups)
    check_momentum("bgn", momentum)
    check_eps("bgn", eps)
    return ChannelGroupBatchNorm2d(num_channels, groups, momentum, float(eps))
