"""Proxy Normalization (Labatie, Masters, Eaton-Rosen & Luschi, NeurIPS 2021); docs/methods.md,
"proxy_ln, proxy_gn: Proxy Normalization".

LN or GN without affine, then the PN-Act unit: z = act(gamma*y + beta), normalized by the mean
and variance of a proxy variable act(gamma*Y + beta) with Y_c = beta~_c + (1 + gamma~_c) U,
U ~ N(0, 1), evaluated by deterministic quadrature over `proxy_points` midpoint quantiles (the
official Graphcore implementation): out = (z - m_c) / sqrt(v_c + proxy_eps). The proxy
statistics are computed in the forward pass from the current parameters, so gradients flow
through them. Batch-independent, identical in training and evaluation, no running buffers.

Where a norm is not followed by an activation (the last norm of a residual branch) the
EfficientNet code uses the plain norm with scale gamma and no shift beta; so does this layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.activations import make_activation
from normlab.norms.base import NormLayer
from normlab.norms.checks import check_eps, check_int, check_positive, resolve_groups
from normlab.norms.registry import register_norm


def midpoint_quantiles(points: int) -> Tensor:
    """The `points` quantiles Phi^-1((k + 0.5) / points) of N(0, 1), k = 0..points-1 (float64)."""
    probabilities = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    return torch.special.ndtri(probabilities)


class ProxyNormAct(NormLayer):
    """GN/LN (no affine) followed by PN-Act, or by a scale alone when no activation follows."""

    batch_dependent = False
    fuses_activation = True

    def __init__(
        self,
        num_channels: int,
        groups: int,
        activation: str | None,
        eps: float = 1e-5,
        proxy_points: int = 200,
        proxy_eps: float = 0.03,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.groups = groups
        self.eps = eps
        self.proxy_eps = proxy_eps
        self.activation = activation
        self._init_affine(num_channels, bias=activation is not None)  # no shift without act
        if activation is None:
            self.register_parameter("proxy_weight", None)
            self.register_parameter("proxy_bias", None)
            self.act = None
        else:
            self.proxy_weight = nn.Parameter(torch.zeros(num_channels))
            self.proxy_bias = nn.Parameter(torch.zeros(num_channels))
            self.act = make_activation(activation)
            # float64 so float64 models get exact quadrature; cast to the compute dtype in use.
            self.register_buffer("quantiles", midpoint_quantiles(proxy_points), persistent=False)

    def extra_repr(self) -> str:
        points = 0 if self.act is None else self.quantiles.numel()
        return (
            f"{self.num_channels}, groups={self.groups}, activation={self.activation}, "
            f"eps={self.eps}, proxy_points={points}, proxy_eps={self.proxy_eps}"
        )

    def proxy_statistics(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and biased variance of act(gamma*Y + beta) over the quantile grid."""
        assert self.act is not None
        u = self.quantiles.to(self.weight.dtype)
        proxy = (1 + self.proxy_weight)[:, None] * u[None, :] + self.proxy_bias[:, None]
        activated = self.act(self.weight[:, None] * proxy + self.bias[:, None])
        var, mean = torch.var_mean(activated, dim=1, unbiased=False)
        return mean, var

    def proxy_parameters(self) -> list[nn.Parameter]:
        """gamma~ and beta~: decayed toward 0 (a standard-normal proxy), as the paper does."""
        return [p for p in (self.proxy_weight, self.proxy_bias) if p is not None]

    def forward(self, x: Tensor) -> Tensor:
        """GN with the affine inside torch's kernel, then one or two elementwise passes. With
        relu the proxy scale s = 1/sqrt(v + proxy_eps) > 0 folds into that affine, since
        relu(a) * s = relu(a * s): out = relu(GN(x; gamma*s, beta*s)) - m*s."""
        if torch.compiler.is_compiling():
            return self._reference_forward(x)  # inductor fuses the plain formula best
        dtype = x.dtype
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        with torch.autocast(device_type=x.device.type, enabled=False):  # statistics in fp32
            x, gamma = x.to(compute), self.weight.to(compute)
            if self.act is None:
                return F.group_norm(x, self.groups, gamma, None, self.eps).to(dtype)
            beta = self.bias.to(compute)
            mean, var = self.proxy_statistics()
            scale = torch.rsqrt(var.to(compute) + self.proxy_eps)
            shift = (mean.to(compute) * scale).view(1, -1, 1, 1)
            if self.activation == "relu":
                y = F.group_norm(x, self.groups, gamma * scale, beta * scale, self.eps)
                out = torch.relu_(y) - shift
            else:
                z = self.act(F.group_norm(x, self.groups, gamma, beta, self.eps))
                out = (z * scale.view(1, -1, 1, 1)).sub_(shift)
        return out.to(dtype)

    def _reference_forward(self, x: Tensor) -> Tensor:
        """The formula written out (the tests compare `forward` with it)."""
        dtype = x.dtype
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        shape = (1, -1, 1, 1)
        with torch.autocast(device_type=x.device.type, enabled=False):  # statistics in fp32
            y = F.group_norm(x.to(compute), self.groups, None, None, self.eps)
            gamma = self.weight.to(compute).view(shape)
            if self.act is None:
                return (y * gamma).to(dtype)
            z = self.act(y * gamma + self.bias.to(compute).view(shape))
            mean, var = self.proxy_statistics()
            scale = torch.rsqrt(var.to(compute) + self.proxy_eps).view(shape)
            out = (z - mean.to(compute).view(shape)) * scale
        return out.to(dtype)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.weight)


def _check(name: str, proxy_points: int, proxy_eps: float, eps: float) -> None:
    check_int(name, "proxy_points", proxy_points, 2)
    check_positive(name, "proxy_eps", proxy_eps)
    check_eps(name, eps)


@register_norm("proxy_ln", summary="LN + Proxy Normalization (Labatie et al. 2021)")
def build_proxy_ln(
    num_channels: int,
    *,
    activation: str | None = None,
    eps: float = 1e-5,
    proxy_points: int = 200,
    proxy_eps: float = 0.03,
) -> ProxyNormAct:
    """LN + Proxy Normalization (Labatie et al., NeurIPS 2021): LN over (C,H,W) without affine,
    then PN-Act: act(gamma*y+beta) normalized by the mean/variance of a Gaussian proxy N(beta~,
    (1+gamma~)^2) through the same affine and activation, by quadrature over proxy_points
    midpoint quantiles. Defaults of the official code: 200 points, proxy_eps 0.03. A norm with
    no activation after it (last norm of a residual branch) is LN with scale gamma and no shift."""
    _check("proxy_ln", proxy_points, proxy_eps, eps)
    return ProxyNormAct(num_channels, 1, activation, eps, proxy_points, proxy_eps)


@register_norm(
    "proxy_gn", summary="GN + Proxy Normalization (Labatie et al. 2021)", test_params={"groups": 2}
)
def build_proxy_gn(
    num_channels: int,
    *,
    activation: str | None = None,
    groups: int | None = 8,
    group_size: int | None = None,
    eps: float = 1e-5,
    proxy_points: int = 200,
    proxy_eps: float = 0.03,
) -> ProxyNormAct:
    """GN + Proxy Normalization (Labatie et al., NeurIPS 2021): GN without affine, then PN-Act
    (see proxy_ln). groups 8 by default (ResNet-20's 16-channel layers); 200 proxy points,
    proxy_eps 0.03 as in the official code."""
    _check("proxy_gn", proxy_points, proxy_eps, eps)
    resolved = resolve_groups("proxy_gn", num_channels, groups, group_size)
    return ProxyNormAct(num_channels, resolved, activation, eps, proxy_points, proxy_eps)
