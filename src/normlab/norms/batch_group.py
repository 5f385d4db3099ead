"""Batch/Group Normalization of Summers & Dinneen, "Four Things Everyone Should Know to Improve
Batch Normalization" (ICLR 2020; official code ceciliaresearch/four_things_batch_norm).

Statistics are shared by a group of `examples_per_group` examples and a group of C/`groups`
channels: the batch is viewed as (N/E, E, G, C/G, H, W) and each (example group, channel
group) is normalized with its biased mean and variance. BN is (groups=C, E=N), Ghost BN is
(groups=C, E=ghost size), GN is (groups=G, E=1). The running state is E[x] and E[x^2] per
channel (init 0 and 1), EMA of the batch averages with momentum 0.01 (TF decay 0.99).
Evaluation averages them within each channel group; with `alpha` > 0 it mixes each example's
own group moments in (inference example weighing, Sec. 3.2 of the paper):
mu_i = alpha a_i + (1-alpha) M1, s_i = alpha b_i + (1-alpha) M2, var_i = s_i - mu_i^2.
"population" mode uses the evaluation path (with alpha weighing when alpha > 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.norms._fast import var_mean
from normlab.norms.checks import (
    check_divides_batch,
    check_eps,
    check_fraction,
    check_groups,
    check_int,
    check_momentum,
)
from normlab.norms.population import PopulationNorm, upcast
from normlab.norms.registry import register_norm


class ExampleChannelGroupNorm2d(PopulationNorm):
    """Summers & Dinneen's Batch/Group Normalization (norm=batch_group): statistics per group
    of `examples_per_group` examples x C/`groups` channels, running E[x], E[x^2] per channel.
    (Unlike ChannelGroupBatchNorm2d, norm=bgn, whose channel groups span the whole batch.)

    Virtual devices need nothing more: examples_per_group divides batch_size (checked before
    training), so no example group straddles two devices' chunks, and the running moments'
    update is linear in the batch averages (the mean of the ranks' updates).
    """

    population_buffers = ("running_m1", "running_m2")  # E[x] and E[x^2] per channel
    supports_eval_alpha = True  # the method's own `alpha` parameter is its eval_alpha

    def __init__(
        self,
        num_channels: int,
        groups: int,
        examples_per_group: int,
        momentum: float | None,
        eps: float,
        alpha: float,
    ) -> None:
        super().__init__(num_channels, num_channels, momentum, eps)
        self.groups = groups
        self.examples_per_group = examples_per_group
        self.eval_alpha = alpha
        self.batch_dependent = examples_per_group > 1  # E = 1 is GN with running statistics

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, groups={self.groups}, examples_per_group="
            f"{self.examples_per_group}, momentum={self.momentum}, eps={self.eps}, "
            f"alpha={self.eval_alpha}"
        )

    def check_batch_size(self, batch_size: int) -> None:
        super().check_batch_size(batch_size)
        check_divides_batch(
            "batch_group",
            "examples_per_group",
            self.examples_per_group,
            batch_size,
            "choose a divisor of the batch",
        )

    def forward(self, x: Tensor) -> Tensor:
        """Every statistic from per-(sample, channel) moments: one two-pass var_mean over (H, W)
        with a one-pass backward (normlab.norms._fast); group statistics by the law of total
        variance on those small tensors; normalization and affine as one per-(sample, channel)
        scale and shift."""
        if torch.compiler.is_compiling():
            return self._reference_forward(x)  # inductor fuses the plain formula best
        in_dtype, x = x.dtype, upcast(x)
        n, c = x.shape[:2]
        g, k = self.groups, c // self.groups
        var_nc, a = (t.view(n, c) for t in var_mean(x, (2, 3)))
        mode = self.stats_mode
        if self.uses_batch_statistics():
            self.check_batch_size(n)
            e = self.examples_per_group
            a_groups = a.view(n // e, e, g, k)
            mu = a_groups.mean(dim=(1, 3), keepdim=True)
            within = var_nc.view(n // e, e, g, k).mean(dim=(1, 3), keepdim=True)
            var = within + (a_groups - mu).square().mean(dim=(1, 3), keepdim=True)
            inv = torch.rsqrt(var + self.eps)  # (n/e, 1, g, 1)
            scale = (inv * self.weight.view(1, 1, g, k)).expand(n // e, e, g, k).reshape(n, c)
            shift = self.bias - mu.expand(n // e, e, g, k).reshape(n, c) * scale
            if self.updates_running_statistics():
                with torch.no_grad():
                    self._update_population(a.mean(0), (var_nc + a * a).mean(0))
            elif mode == "record":
                with torch.no_grad():
                    self._record(x.numel() // g, *self._group_average(a, var_nc + a * a))
        else:
            m1, m2 = self._group_average(self.running_m1[None], self.running_m2[None])
            mu, s = m1.expand(n, g), m2.expand(n, g)
            alpha = self.eval_alpha
            if alpha > 0.0:
                own_mu, own_s = self._group_moments(a, var_nc + a * a)
                mu = alpha * own_mu + (1.0 - alpha) * mu
                s = alpha * own_s + (1.0 - alpha) * s
            var = (s - mu * mu).clamp_min(0.0)
            inv = torch.rsqrt(var + self.eps)  # (n, g)
            scale = (inv.view(n, g, 1) * self.weight.view(1, g, k)).reshape(n, c)
            shift = self.bias - mu.repeat_interleave(k, dim=1) * scale
        shape = (n, c, 1, 1)
        return (x * scale.view(shape)).add_(shift.view(shape)).to(in_dtype)

    def _reference_forward(self, x: Tensor) -> Tensor:
        """The formula written out (the tests compare `forward` with it); same side effects."""
        in_dtype, x = x.dtype, upcast(x)
        n, c, h, w = x.shape
        g = self.groups
        # Per-example, per-channel moments over (H, W): a = E[x], b = E[x^2].
        a = x.mean(dim=(2, 3))
        b = (x * x).mean(dim=(2, 3))
        mode = self.stats_mode
        if self.uses_batch_statistics():
            self.check_batch_size(n)
            e = self.examples_per_group
            mu = a.reshape(n // e, e, g, c // g).mean(dim=(1, 3))
            s = b.reshape(n // e, e, g, c // g).mean(dim=(1, 3))
            mu = mu.repeat_interleave(e, dim=0)
            s = s.repeat_interleave(e, dim=0)
            if self.updates_running_statistics():
                self._update_population(a.detach().mean(0), b.detach().mean(0))
            elif mode == "record":
                self._record(n * (c // g) * h * w, *self._group_average(a, b))
        else:
            m1, m2 = self._group_average(self.running_m1[None], self.running_m2[None])
            mu, s = m1.expand(n, g), m2.expand(n, g)
            alpha = self.eval_alpha
            if alpha > 0.0:
                own_mu, own_s = self._group_moments(a, b)
                mu = alpha * own_mu + (1.0 - alpha) * mu
                s = alpha * own_s + (1.0 - alpha) * s
        var = (s - mu * mu).clamp_min(0.0)
        # (N, G) statistics broadcast to each channel of the group.
        mu_c = mu.repeat_interleave(c // g, dim=1)[:, :, None, None]
        inv_c = torch.rsqrt(var + self.eps).repeat_interleave(c // g, dim=1)[:, :, None, None]
        y = (x - mu_c) * inv_c
        return (y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(in_dtype)

    def _group_moments(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example moments averaged within each channel group: (N, G) each."""
        n, c = a.shape
        return (
            a.reshape(n, self.groups, c // self.groups).mean(2),
            b.reshape(n, self.groups, c // self.groups).mean(2),
        )

    def _group_average(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Moments averaged over examples and the channels of each group: (G,) each."""
        mu, s = self._group_moments(a, b)
        return mu.mean(0), s.mean(0)

    def _load_population(self, mean: Tensor, ex2: Tensor) -> None:
        k = self.num_channels // self.groups
        self.running_m1.copy_(mean.repeat_interleave(k))
        self.running_m2.copy_(ex2.repeat_interleave(k))


@register_norm(
    "batch_group",
    summary="Batch/Group Norm (Summers & Dinneen 2020): over example groups x channel groups",
    test_params={"groups": 2, "examples_per_group": 2},
)
def build_batch_group(
    num_channels: int,
    *,
    groups: int = 8,
    examples_per_group: int = 2,
    momentum: float | None = 0.01,
    eps: float = 1e-5,
    alpha: float = 0.0,
) -> ExampleChannelGroupNorm2d:
    """Batch/Group Normalization (Summers & Dinneen, ICLR 2020, "Four Things Everyone Should
    Know to Improve Batch Normalization"): statistics over examples_per_group examples x
    C/groups channels; running E[x], E[x^2] per channel (init 0/1), momentum 0.01 (= TF decay
    0.99), eps 1e-5. The paper's example is G=32, E=2; CIFAR ResNet-20 has 16-channel layers, so
    groups defaults to 8. alpha > 0 mixes each example's own moments in at evaluation (example
    weighing; 0 = off)."""
    check_groups("batch_group", num_channels, groups)
    check_int(
        "batch_group", "examples_per_group", examples_per_group, 1, " dividing the per-device batch"
    )
    check_momentum("batch_group", momentum)
    check_eps("batch_group", eps)
    check_fraction("batch_group", "alpha", alpha)
    return ExampleChannelGroupNorm2d(
        num_channels,
        groups,
        examples_per_group,
        None if momentum is None else float(momentum),
        float(eps),
        float(alpha),
    )
