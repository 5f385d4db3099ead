"""Instance Enhancement Batch Normalization (Liang, Huang, Liang & Yang, AAAI 2020,
arXiv 1908.04008; official code gbup-group/IEBN).

x_hat = BN without affine (torch BN buffers, momentum 0.1, eps 1e-5); a per-instance,
per-channel gate a = sigmoid(gate_weight * GAP(x) + gate_bias) on the input's global average
pool; y = x_hat * (gamma * a) + beta, with gamma and beta held as BN's weight and bias (so
initializers that set a BatchNorm2d's weight to 1, as timm's do, keep IEBN's init).
Init gamma = 1, beta = 0, gate_weight = 0, gate_bias = -1, so at init every gate is
sigmoid(-1) ~ 0.269.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.norms.batch import BatchNorm2d
from normlab.norms.checks import check_eps, check_momentum
from normlab.norms.registry import register_norm


class InstanceEnhancementBatchNorm2d(BatchNorm2d):
    """IEBN: affine-free BN (with the stats modes of bn) scaled by a per-instance GAP gate."""

    supports_eval_alpha = False  # its forward normalizes without bn's example weighing

    def __init__(self, num_channels: int, momentum: float | None, eps: float) -> None:
        # BN's own affine parameters serve as gamma (weight) and beta (bias); the normalization
        # itself runs without them, and the gate multiplies gamma.
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=True)
        self.gate_weight = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.gate_bias = nn.Parameter(torch.full((1, num_channels, 1, 1), -1.0))

    def forward(self, x: Tensor) -> Tensor:
        x_hat = self.batch_norm(x, None, None)
        gap = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(torch.addcmul(self.gate_bias, self.gate_weight, gap))
        # one fused pass: beta + x_hat * (gamma * gate), the scale per sample and channel
        y = torch.addcmul(self.bias.view(1, -1, 1, 1), x_hat, self.weight.view(1, -1, 1, 1) * gate)
        return y.to(x.dtype)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.weight)


@register_norm(
    "iebn", summary="Instance Enhancement BN (Liang et al. 2020): BN with a per-instance GAP gate"
)
def build_iebn(
    num_channels: int, *, momentum: float | None = 0.1, eps: float = 1e-5
) -> InstanceEnhancementBatchNorm2d:
    """Instance Enhancement BN (Liang et al., AAAI 2020): affine-free BN times gamma *
    sigmoid(gate on the input's global average pool) plus beta; gate init weight 0, bias -1.
    momentum 0.1, eps 1e-5."""
    check_momentum("iebn", momentum)
    check_eps("iebn", eps)
    return InstanceEnhancementBatchNorm2d(num_channels, momentum, float(eps))
