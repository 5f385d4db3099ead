"""Cross-Iteration Batch Normalization (Yao, Cao, Zheng, Huang & Lin, CVPR 2021);
docs/methods.md, "cbn: Cross-Iteration Batch Normalization".

Batch statistics of the current iteration are averaged with those of the previous k-1
optimizer steps, each compensated to the current weights of the preceding convolution by a
first-order Taylor expansion in that convolution's weights only:

    mu^_{t-tau} = mu_{t-tau} + rho * dmu/dW|_{t-tau} . (W_t - W_{t-tau})     (nu likewise)
    mu_bar = mean over the window of mu^,  nu_bar = mean of max(nu^, mu^^2)  (the paper's max)
    y = gamma * (x - mu_bar) / sqrt(nu_bar - mu_bar^2 + eps) + beta.

Past quantities are constants (no gradient); gradients flow through the current iteration's
statistics. The derivatives are computed in closed form as convolution weight-gradients
(dmu_c/dW[c] = mean input patch, dnu_c/dW[c] = 2 E[x_c * patch]). The window advances once per
optimizer step (`on_optimizer_step`, called by normlab's LightningModule), not per forward, so
gradient accumulation does not shift it; window and step counter are buffers, so they survive
checkpoints. Plain BN during the first `burnin_steps` steps. A layer with no conv right before
it (pre-activation blocks normalize the residual sum) averages its past statistics without
compensation (no_conv=naive, announced as a warning at build) or fails the build (no_conv=error).
Evaluation uses running
statistics (EMA of the current iteration's mean and unbiased variance), as the official code.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from normlab.norms.batch import BatchNorm2d
from normlab.norms.checks import check_eps, check_fraction, check_int, check_momentum
from normlab.norms.registry import register_norm


class CrossIterationBatchNorm2d(BatchNorm2d):
    """CBN; must be bound to the convolution that produces its input (`bind_conv`)."""

    needs_conv = True
    supports_eval_alpha = False  # not offered for cbn (its forward is its own)
    virtual_devices_refusal = (
        "cbn (Cross-Iteration BN): each rank compensates its own window of past statistics "
        "through the conv weights, so emulating k ranks would need k windows and k "
        "per-chunk weight derivatives; train cbn with virtual_devices=1 (real devices are fine)"
    )

    def __init__(
        self,
        num_channels: int,
        window: int,
        burnin_steps: int,
        momentum: float | None,
        eps: float,
        rho: float,
        no_conv: str = "naive",
    ) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum)
        self.no_conv = no_conv
        self.uncompensated = False  # set for layers with no conv right before them (no_conv=naive)
        self.window = window
        self.burnin_steps = burnin_steps
        self.rho = rho
        past = window - 1
        self.register_buffer("num_steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("filled", torch.tensor(0, dtype=torch.long))
        self.register_buffer("head", torch.tensor(0, dtype=torch.long))
        self.register_buffer("past_mean", torch.zeros(past, num_channels))
        self.register_buffer("past_sq", torch.zeros(past, num_channels))
        # Shapes depend on the bound convolution; set by bind_conv.
        self.register_buffer("past_dmean", torch.zeros(0))
        self.register_buffer("past_dsq", torch.zeros(0))
        self.register_buffer("past_weight", torch.zeros(0))
        self._conv: weakref.ReferenceType[nn.Conv2d] | None = None
        self._conv_input: Tensor | None = None
        self._pending: tuple[Tensor, ...] | None = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, burnin_steps={self.burnin_steps}, rho={self.rho}"

    @property
    def conv(self) -> nn.Conv2d | None:
        """The bound convolution (held by weak reference, so it is not a submodule)."""
        return self._conv() if self._conv is not None else None

    def bind_conv(self, conv: nn.Conv2d) -> None:
        """Bind the convolution whose output this layer normalizes; size the window buffers."""
        if conv.out_channels != self.num_features:
            raise ValueError(
                f"cbn with {self.num_features} channels cannot follow a conv with {conv.out_channels} outputs"
            )
        if conv.groups != 1:
            raise ValueError("cbn supports convolutions with groups=1 only")
        self._conv = weakref.ref(conv)
        flat = conv.weight[0].numel()
        past = self.window - 1
        device = self.running_mean.device  # type: ignore[union-attr]
        self.past_dmean = torch.zeros(past, self.num_features, flat, device=device)
        self.past_dsq = torch.zeros(past, self.num_features, flat, device=device)
        self.past_weight = torch.zeros(past, self.num_features, flat, device=device)
        conv.register_forward_hook(self._remember_conv_input)

    def _remember_conv_input(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor
    ) -> None:
        if self.training:
            self._conv_input = inputs[0].detach()

    def forward(self, x: Tensor) -> Tensor:
        cross = self.updates_running_statistics() and self.window > 1
        if not cross:
            return super().forward(x)
        if self.uncompensated:
            return self._naive_forward(x)
        conv = self.conv
        if conv is None or self._conv_input is None:
            raise ValueError(
                "cbn layer has no convolution bound: CBN compensates statistics through the "
                "weights of the conv right before it (normlab.models.binding.bind_norms_to_convs)"
            )
        mean = x.mean(dim=(0, 2, 3))
        sq = x.pow(2).mean(dim=(0, 2, 3))
        weight = conv.weight.detach().flatten(1)
        self._remember_iteration(x, mean, sq, conv, weight)
        self._update_running(x, mean)
        mean_bar, sq_bar = self._window_statistics(mean, sq, weight)
        var = (sq_bar - mean_bar.pow(2)).clamp_min(0.0)
        y = (x - mean_bar.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def mark_uncompensated(self) -> None:
        """No conv precedes this layer (a pre-activation norm sees a residual sum): average the
        past statistics without compensation (rho = 0, the paper's naive baseline)."""
        if self.no_conv != "naive":
            raise ValueError("cbn: no convolution precedes this layer and no_conv=error")
        self.uncompensated = True

    def _naive_forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(0, 2, 3))
        sq = x.pow(2).mean(dim=(0, 2, 3))
        self._pending = (mean.detach(), sq.detach())
        self._update_running(x, mean)
        filled = int(self.filled)
        if filled and int(self.num_steps) >= self.burnin_steps:
            past_mean, past_sq = (
                self.past_mean[:filled],
                torch.maximum(self.past_sq[:filled], self.past_mean[:filled].pow(2)),
            )
            mean, sq = (
                (mean + past_mean.sum(0)) / (filled + 1),
                (sq + past_sq.sum(0)) / (filled + 1),
            )
        var = (sq - mean.pow(2)).clamp_min(0.0)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    @torch.no_grad()
    def _remember_iteration(
        self, x: Tensor, mean: Tensor, sq: Tensor, conv: nn.Conv2d, weight: Tensor
    ) -> None:
        """Statistics and their weight-derivatives of this iteration, stored at the next step."""
        z = self._conv_input
        assert z is not None
        count = x.numel() / x.shape[1]
        grad_args = (conv.weight.shape, conv.stride, conv.padding, conv.dilation, conv.groups)
        dmean = conv2d_weight(z, grad_args[0], torch.full_like(x, 1.0 / count), *grad_args[1:])
        dsq = conv2d_weight(z, grad_args[0], x.detach() * (2.0 / count), *grad_args[1:])
        self._pending = (
            mean.detach(),
            sq.detach(),
            dmean.flatten(1),
            dsq.flatten(1),
            weight.clone(),
        )

    @torch.no_grad()
    def _update_running(self, x: Tensor, mean: Tensor) -> None:
        """The running mean and unbiased variance of the current iteration, as bn's."""
        count = x.numel() / x.shape[1]
        var = x.detach().var(dim=(0, 2, 3), unbiased=False) * count / max(count - 1, 1)
        self._update_population(mean.detach(), var)

    def _window_statistics(self, mean: Tensor, sq: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and E[x^2] over the current and the compensated past iterations."""
        filled = int(self.filled)
        if filled == 0 or int(self.num_steps) < self.burnin_steps:
            return mean, sq
        with torch.no_grad():
            delta = weight.unsqueeze(0) - self.past_weight[:filled]
            mean_hat = self.past_mean[:filled] + self.rho * (self.past_dmean[:filled] * delta).sum(
                -1
            )
            sq_hat = self.past_sq[:filled] + self.rho * (self.past_dsq[:filled] * delta).sum(-1)
            sq_hat = torch.maximum(
                sq_hat, mean_hat.pow(2)
            )  # the paper's max: non-negative variances
        return (mean + mean_hat.sum(0)) / (filled + 1), (sq + sq_hat.sum(0)) / (filled + 1)

    @torch.no_grad()
    def on_optimizer_step(self) -> None:
        """An optimizer step happened: the last training iteration enters the window."""
        if self._pending is None:
            return
        if self.window > 1:
            slot = int(self.head)
            window: tuple[Tensor, ...] = (self.past_mean, self.past_sq)
            if not self.uncompensated:  # the naive window holds statistics only
                window += (self.past_dmean, self.past_dsq, self.past_weight)
            for buffer, value in zip(window, self._pending, strict=True):
                buffer[slot].copy_(value)
            self.head.fill_((slot + 1) % (self.window - 1))
            self.filled.fill_(min(int(self.filled) + 1, self.window - 1))
        self.num_steps.add_(1)
        self._pending = None
        self._conv_input = None


@register_norm(
    "cbn",
    summary="Cross-Iteration BN (Yao et al. 2021); compensation through the preceding conv",
    test_params={"burnin_steps": 0},
)
def build_cbn(
    num_channels: int,
    *,
    window: int = 4,
    burnin_steps: int = 500,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    rho: float = 1.0,
    no_conv: str = "naive",
) -> CrossIterationBatchNorm2d:
    """Cross-Iteration BN (Yao et al., CVPR 2021): batch statistics averaged over the last
    `window` optimizer steps (current one included), compensated to the current conv weights by
    a Taylor expansion (rho scales it; 0 = naive averaging). Plain BN for the first burnin_steps
    steps. Per-iteration variances kept non-negative by the paper's max (not the official code's
    drop). The official COCO setting is window 4 with an 8-epoch burn-in. no_conv: a layer with
    no conv right before it (pre-activation) averages naively (warned) or fails (error)."""
    check_int("cbn", "window", window, 1, " (iterations, the current one included)")
    check_int("cbn", "burnin_steps", burnin_steps, 0)
    check_fraction("cbn", "rho", rho, " (0: no compensation)")
    if no_conv not in ("naive", "error"):
        raise ValueError(f"cbn: no_conv must be naive or error, got {no_conv!r}")
    check_momentum("cbn", momentum)
    check_eps("cbn", eps)
    return CrossIterationBatchNorm2d(
        num_channels, window, burnin_steps, momentum, float(eps), float(rho), no_conv
    )
