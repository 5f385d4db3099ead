"""Batch Renormalization (Ioffe, NeurIPS 2017, "Batch Renormalization: Towards Reducing
Minibatch Dependence in Batch-Normalized Models").

Training: x_hat = (x - mu_B) / sigma_B * r + d with r = sg(clip(sigma_B / sigma, 1/r_max, r_max)),
d = sg(clip((mu_B - mu) / sigma, -d_max, d_max)), sigma_B = sqrt(biased var_B + eps) and mu, sigma
the moving averages (the paper averages sigma, not sigma^2). Moving averages:
mu += momentum (mu_B - mu), sigma += momentum (sigma_B - sigma). Evaluation: (x - mu) / sigma.
Schedule over `num_steps` (training forwards in "ema" mode, saved in the state dict):
r_max = 1 and d_max = 0 before `warmup_steps`, then linear ramps reaching `r_max` at
`r_max_steps` and `d_max` at `d_max_steps` (paper: 5k, 40k, 25k steps).
"record" and "batch" modes normalize with plain batch statistics (r = 1, d = 0).

Virtual devices: each DDP rank corrects its batch toward its own moving averages, which the
ranks keep apart between reconciliations (normlab averages them before every evaluation and
checkpoint). With k virtual devices the layer keeps k per-rank moving averages during training
(`running_mean`/`running_std` hold their mean, what reconciliation gives) and collapses them to
that mean at the same points (`reconcile_virtual_ranks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.norms._fast import batch_norm_train, channel_var_mean
from normlab.norms.checks import check_eps, check_int, check_momentum
from normlab.norms.population import PopulationNorm, population_var, upcast
from normlab.norms.registry import register_norm


def _ramp(step: Tensor, start: int, end: int) -> Tensor:
    """0 before `start`, linear to 1 at `end` (a step to 1 at `start` when end <= start)."""
    if end <= start:
        return (step >= start).to(step.dtype)
    return ((step - start) / (end - start)).clamp(0.0, 1.0)


class BatchRenorm2d(PopulationNorm):
    """Batch Renormalization with running mean and running sigma per channel."""

    population_buffers = ("running_mean", "running_std")
    population_counter = "num_steps"  # training forwards in "ema" mode: the ramps' clock too
    _rank_mean: Tensor | None = None  # (k, C) per-virtual-rank moving averages, in training
    _rank_std: Tensor | None = None

    def __init__(
        self,
        num_channels: int,
        r_max: float,
        d_max: float,
        warmup_steps: int,
        r_max_steps: int,
        d_max_steps: int,
        momentum: float | None,
        eps: float,
    ) -> None:
        super().__init__(num_channels, num_channels, momentum, eps)
        self.r_max, self.d_max = r_max, d_max
        self.warmup_steps, self.r_max_steps, self.d_max_steps = (
            warmup_steps,
            r_max_steps,
            d_max_steps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, r_max={self.r_max}, d_max={self.d_max}, warmup_steps="
            f"{self.warmup_steps}, r_max_steps={self.r_max_steps}, d_max_steps="
            f"{self.d_max_steps}, momentum={self.momentum}, eps={self.eps}"
        )

    def current_limits(self) -> tuple[Tensor, Tensor]:
        """(r_max, d_max) at the current `num_steps`, as tensors (no host sync)."""
        step = self.num_steps.to(self.running_mean.dtype)
        r = 1.0 + (self.r_max - 1.0) * _ramp(step, self.warmup_steps, self.r_max_steps)
        d = self.d_max * _ramp(step, self.warmup_steps, self.d_max_steps)
        return r, d

    def forward(self, x: Tensor) -> Tensor:
        """Batch Renorm as batch_norm kernels: the stop-gradient r, d fold into the affine
        (weight gamma*r, bias gamma*d + beta), so training is one normalization pass with the
        batch statistics from sums (normlab.norms._fast) and torch's batch-norm backward."""
        in_dtype, x = x.dtype, upcast(x)
        mode = self.stats_mode
        weight, bias = self.weight, self.bias
        if not self.uses_batch_statistics():
            # (x - mu) / sigma: eval-mode batch_norm with variance sigma^2 and no eps.
            var = self.running_std.square()
            y = F.batch_norm(x, self.running_mean, var, weight, bias, False, 0.0, 0.0)
        elif mode != "batch" and self.virtual_chunks(x) > 1:
            y = self._virtual_ranks_forward(x, mode)
        else:
            var, mean = channel_var_mean(x)
            if mode == "record":
                m64 = mean.double()
                self._record(x.numel() // x.shape[1], m64, var.double() + m64 * m64)
            elif self.updates_running_statistics():
                r, d = self._renormalize_factors(mean, torch.sqrt(var + self.eps))
                weight, bias = weight * r, torch.addcmul(bias, weight, d)
            y = self._train_kernel(x, var, mean, weight, bias)
        return y.to(in_dtype)

    def _train_kernel(
        self, x: Tensor, var: Tensor, mean: Tensor, weight: Tensor, bias: Tensor
    ) -> Tensor:
        """Training-mode batch norm of `x` given its batch statistics (channel_var_mean)."""
        if torch.compiler.is_compiling():  # one traceable native op
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        return batch_norm_train(x, var, mean, weight, bias, self.eps)

    def _virtual_ranks_forward(self, x: Tensor, mode: str) -> Tensor:
        """Each chunk of `virtual_batch_size` renormalized as its own rank: per-chunk batch
        statistics, each corrected toward that rank's own moving averages."""
        assert self.virtual_batch_size is not None
        n, c = x.shape[:2]
        chunk = self.virtual_batch_size
        k = n // chunk
        # (chunk, k*C, HW): one "channel" per (rank, channel), as in normlab.norms.virtual
        xp = x.reshape(k, chunk, c, -1).transpose(0, 1).reshape(chunk, k * c, -1)
        var, mean = channel_var_mean(xp)
        weight, bias = self.weight.repeat(k), self.bias.repeat(k)
        if mode == "record":
            m64, v64 = mean.double().view(k, c), var.double().view(k, c)
            self._record(x.numel() // c, m64.mean(0), (v64 + m64 * m64).mean(0))
        else:
            r, d = self._rank_factors(mean.view(k, c), torch.sqrt(var + self.eps).view(k, c))
            weight, bias = weight * r.flatten(), torch.addcmul(bias, weight, d.flatten())
        y = self._train_kernel(xp, var, mean, weight, bias)
        return y.view(chunk, k, c, -1).transpose(0, 1).reshape(x.shape)

    @torch.no_grad()
    def _rank_factors(self, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """r, d (k, C) of each virtual rank from its own moving averages, which then take its
        update; running_mean/std become the ranks' mean."""
        k = mean.shape[0]
        if self._rank_mean is None or self._rank_std is None or self._rank_mean.shape[0] != k:
            self._rank_mean = self.running_mean.expand(k, -1).clone()
            self._rank_std = self.running_std.expand(k, -1).clone()
        r, d = self._corrections(mean, std, self._rank_mean, self._rank_std)
        factor = self._ema_factor()
        self._rank_mean.lerp_(mean, factor)
        self._rank_std.lerp_(std, factor)
        self.running_mean.copy_(self._rank_mean.mean(0))
        self.running_std.copy_(self._rank_std.mean(0))
        return r, d

    def reconcile_virtual_ranks(self) -> None:
        """The ranks' moving averages become their mean (DDP reconciliation); the next
        training step starts every virtual rank from it."""
        self._rank_mean = self._rank_std = None

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        self.reconcile_virtual_ranks()  # loaded buffers are what every rank starts from
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]

    def _reference_forward(self, x: Tensor) -> Tensor:
        """The formula written out (the tests compare `forward` with it); same side effects."""
        in_dtype, x = x.dtype, upcast(x)
        mode = self.stats_mode
        if not self.uses_batch_statistics():
            y = (x - self.running_mean.view(1, -1, 1, 1)) / self.running_std.view(1, -1, 1, 1)
        else:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            std = torch.sqrt(var + self.eps)
            y = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
            if mode == "record":
                m64 = mean.detach().double()
                self._record(x.numel() // x.shape[1], m64, var.detach().double() + m64 * m64)
            elif self.updates_running_statistics():
                y = self._renormalize(y, mean.detach(), std.detach())
        return (y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(in_dtype)

    def _renormalize(self, y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Apply the stop-gradient r, d correction and update the moving averages."""
        r, d = self._renormalize_factors(mean, std)
        return y * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)

    @torch.no_grad()
    def _renormalize_factors(self, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """r, d from the batch mean and sigma_B = sqrt(biased var + eps); then update the moving
        averages (momentum None: cumulative average over the training steps) and the step
        count."""
        r, d = self._corrections(mean, std, self.running_mean, self.running_std)
        self._update_population(mean, std)
        return r, d

    def _corrections(
        self, mean: Tensor, std: Tensor, moving_mean: Tensor, moving_std: Tensor
    ) -> tuple[Tensor, Tensor]:
        """r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max,
        d_max) toward the given moving averages, at the current step's limits."""
        r_max, d_max = self.current_limits()
        r = torch.clamp(std / moving_std, 1.0 / r_max, r_max)
        d = torch.clamp((mean - moving_mean) / moving_std, -d_max, d_max)
        return r, d

    def _load_population(self, mean: Tensor, ex2: Tensor) -> None:
        self.reconcile_virtual_ranks()
        self.running_mean.copy_(mean)
        self.running_std.copy_(torch.sqrt(population_var(mean, ex2) + self.eps))


@register_norm(
    "brn",
    summary="Batch Renormalization (Ioffe 2017): BN corrected toward the moving statistics",
    test_params={"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "r_max": 1.5, "d_max": 0.5},
)
def build_brn(
    num_channels: int,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_steps: int = 5000,
    r_max_steps: int = 40000,
    d_max_steps: int = 25000,
    momentum: float | None = 0.01,
    eps: float = 1e-5,
) -> BatchRenorm2d:
    """Batch Renormalization (Ioffe, NeurIPS 2017): BN corrected by stop-gradient r, d toward
    the moving mean and moving sigma (momentum 0.01). r_max=1, d_max=0 until warmup_steps=5000,
    then linear ramps reaching r_max=3 at r_max_steps=40000 and d_max=5 at d_max_steps=25000
    (counted in training forward passes, buffer num_steps). Eval uses the moving averages."""
    if not float(r_max) >= 1.0:
        raise ValueError(f"brn: r_max must be >= 1, got {r_max}")
    if not float(d_max) >= 0.0:
        raise ValueError(f"brn: d_max must be >= 0, got {d_max}")
    steps = {"warmup_steps": warmup_steps, "r_max_steps": r_max_steps, "d_max_steps": d_max_steps}
    for key, value in steps.items():
        check_int("brn", key, value, 0)
    for key in ("r_max_steps", "d_max_steps"):
        if steps[key] < warmup_steps:
            raise ValueError(
                f"brn: {key}={steps[key]} must be >= warmup_steps={warmup_steps} "
                "(the ramp runs from warmup_steps to it)"
            )
    check_momentum("brn", momentum)
    check_eps("brn", eps)
    return BatchRenorm2d(
        num_channels,
        float(r_max),
        float(d_max),
        warmup_steps,
        r_max_steps,
        d_max_steps,
        None if momentum is None else float(momentum),
        float(eps),
    )
