"""Failure-mode metrics of Proxy Normalization (Labatie et al., NeurIPS 2021); docs/methods.md,
"Power decomposition".

For a layer output y (N, C, H, W) the total power splits exactly (biased moments) into
    P = E_c[mu_c^2] + E_c[Var_n(m_nc)] + E_{c,n}[s^2_nc]
      = P_const (channel-wise constant) + P_inst (between-instance) + P_spatial,
with mu_c the channel mean, m_nc the instance means and s^2_nc the instance variances.
LN's collapse shows as R_collapse = P_const / P -> 1; IN's lack of instance variability as
R_inst = P_inst / (P - P_const) -> 0 and a small spread CV_sigma of the instance stds.
"""

from __future__ import annotations

from torch import Tensor


def power_decomposition(y: Tensor, eps: float = 1e-12) -> dict[str, float]:
    """The three power terms of `y` and the two failure-mode ratios, in float64."""
    y = y.detach().double()
    if y.dim() != 4:
        raise ValueError(f"power_decomposition needs (N, C, H, W), got shape {tuple(y.shape)}")
    instance_mean = y.mean(dim=(2, 3))  # (N, C)
    instance_var = y.var(dim=(2, 3), unbiased=False)  # (N, C)
    channel_mean = instance_mean.mean(dim=0)  # (C,)
    total = y.pow(2).mean().item()
    const = channel_mean.pow(2).mean().item()
    inst = instance_mean.var(dim=0, unbiased=False).mean().item()
    spatial = instance_var.mean().item()
    instance_std = instance_var.sqrt()
    cv_sigma = (
        (instance_std.std(dim=0, unbiased=False) / instance_std.mean(dim=0).clamp_min(eps))
        .mean()
        .item()
    )
    return {
        "power": total,
        "power_const": const,
        "power_inst": inst,
        "power_spatial": spatial,
        "collapse_ratio": const / max(total, eps),
        "instance_ratio": inst / max(total - const, eps),
        "instance_std_cv": cv_sigma,
    }


def activation_scale(x: Tensor) -> dict[str, float]:
    """Activation scale of a layer ("Understanding BN"): mean |channel mean|, mean channel std,
    and the max/median ratio of channel stds (a few channels dominating)."""
    x = x.detach().double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return {
        "act_abs_mean": mean.abs().mean().item(),
        "act_std": std.mean().item(),
        "act_std_max_over_median": (std.max() / std.median().clamp_min(1e-12)).item(),
    }


def batch_population_distance(
    x: Tensor, running_mean: Tensor, running_var: Tensor
) -> dict[str, float]:
    """How far a batch's per-channel statistics are from the layer's population statistics,
    in units of the population std (the train-test inconsistency of batch-dependent layers)."""
    x = x.detach().double()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    pop_std = running_var.double().clamp_min(1e-12).sqrt()
    return {
        "stat_mean_gap": ((mean - running_mean.double()).abs() / pop_std).mean().item(),
        "stat_std_ratio": (var.sqrt() / pop_std).mean().item(),
    }
