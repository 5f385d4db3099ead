"""How batch-dependent layers choose and estimate their normalization statistics.

One small interface shared by every layer that carries running (population) statistics, used by
PreciseBN, FrozenBN and batch-statistics inference (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", arXiv 2105.07576, Sec. 2.2-2.4). `stats_mode` is one of:

* "ema" (default): training normalizes with batch statistics and updates the running
  statistics; evaluation uses the running statistics (the method's own behaviour).
* "record": normalize with batch statistics in train and eval mode alike, leave the running
  statistics alone, and accumulate per statistic the count n, sum n*mean and sum n*E[x^2]
  (float64), for the total-variance (law of total variance) population estimate of fvcore/pycls.
* "batch": normalize every forward with the current batch's own statistics (also in eval).
* "population": normalize with the running statistics even in training (FrozenBN); gradients
  still flow to the affine parameters.

Accumulators are per statistic the layer normalizes with (per channel for BN, per group for
BGN). `recorded_moments()` stacks them as one (3, S) float64 tensor so a caller can all_reduce
it across DDP ranks, `load_recorded_moments()` puts the reduced tensor back, and
`finish_recording()` writes the population mean and the biased total variance
E[x^2] - mean^2 into the layer's running buffers.

Every layer with running statistics declares them here, once: which buffers they are
(`population_buffers`, what DDP reconciliation, normlab.stats.callbacks.ReconcileNormBuffers,
averages across ranks) and which counter counts its batches (`population_counter`), and whether its evaluation implements example weighing
(`supports_eval_alpha`, Summers & Dinneen 2020). The mode predicate (`uses_batch_statistics`) and the EMA
update with torch's momentum convention (`_update_population`) live here too, so no layer
re-derives them.

`state_guard` is the one way code that evaluates or inspects a model (PreciseBN, the EMA vs
PreciseBN comparison, batch-statistics and shifted-domain evaluation, probes, tracing) saves
the state it is about to change and puts it back afterwards, also when the work fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

from normlab.norms.base import NormLayer
from normlab.norms.virtual import (
    VirtualDevices,
    chunk_batch_norm,
    set_virtual_batch_size,
    virtual_batch_size_of,
)

STATS_MODES = ("ema", "record", "batch", "population")


def check_stats_mode(mode: str) -> str:
    """Return `mode` if it is a valid statistics mode, else a ValueError naming the valid ones."""
    if mode not in STATS_MODES:
        raise ValueError(f"unknown stats_mode {mode!r}; valid modes: {', '.join(STATS_MODES)}")
    return mode


class PopulationStats:
    """Mixin for layers with running statistics; see the module docstring for the modes.

    Declarations (class attributes): `population_buffers`, the running statistics in the order
    `_update_population` and `_load_population` take them (floating buffers; DDP reconciliation
    averages exactly these); `population_counter`, the integer buffer counting the batches (the
    divisor of the cumulative average that `momentum=None` asks for); `supports_eval_alpha`,
    whether evaluation mixes each example's own moments into the population ones with weight
    `eval_alpha` (example-weighed inference, Summers & Dinneen 2020, Sec. 3.2).

    Subclasses call `_record(n, mean, ex2)` from their forward in "record" mode; the default
    `_load_population(mean, ex2)` writes mean and biased variance into the two buffers.
    """

    population_buffers: ClassVar[tuple[str, ...]] = ("running_mean", "running_var")
    population_counter: ClassVar[str] = "num_batches_tracked"
    supports_eval_alpha: ClassVar[bool] = False
    momentum: float | None
    training: bool
    _stats_mode: str = "ema"
    _recorded: Tensor | None = None
    _eval_alpha: float = 0.0

    @property
    def eval_alpha(self) -> float:
        """The example weight evaluation uses (0: the population statistics alone)."""
        return self._eval_alpha

    @eval_alpha.setter
    def eval_alpha(self, alpha: float) -> None:
        if alpha > 0 and not self.supports_eval_alpha:
            from normlab.norms.registry import eval_alpha_norms

            names = eval_alpha_norms()
            listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
            raise ValueError(
                f"{type(self).__name__} does not implement example-weighed inference "
                f"(eval_alpha); it is available for norm={listed}"
            )
        self._eval_alpha = float(alpha)

    @property
    def stats_mode(self) -> str:
        """The current statistics mode (one of STATS_MODES)."""
        return self._stats_mode

    @stats_mode.setter
    def stats_mode(self, mode: str) -> None:
        self._stats_mode = check_stats_mode(mode)

    def uses_batch_statistics(self) -> bool:
        """Whether a forward now normalizes with the batch's own statistics: always in "batch"
        and "record" modes, in "ema" mode while training; otherwise (evaluation in "ema" mode,
        "population" mode) with the running statistics."""
        mode = self._stats_mode
        return mode in ("batch", "record") or (mode == "ema" and self.training)

    def updates_running_statistics(self) -> bool:
        """Whether a forward now updates the running statistics: "ema" mode while training."""
        return self._stats_mode == "ema" and self.training

    def population_tensors(self) -> list[Tensor]:
        """The running-statistics buffers this layer declares (`population_buffers`)."""
        return [getattr(self, name) for name in self.population_buffers]

    def _ema_factor(self) -> float:
        """Count one more batch and return the weight its statistics get in the running ones:
        `momentum` (r <- (1 - m) r + m s, torch's convention), or 1/count with momentum None
        (the cumulative average over the batches so far, as torch's BatchNorm)."""
        counter = getattr(self, self.population_counter)
        counter.add_(1)
        if self.momentum is None:
            return 1.0 / float(counter)
        return float(self.momentum)

    @torch.no_grad()
    def _update_population(self, *statistics: Tensor) -> None:
        """One EMA (or cumulative) update of the `population_buffers` with this batch's
        `statistics`, given in the same order."""
        factor = self._ema_factor()
        for buffer, value in zip(self.population_tensors(), statistics, strict=True):
            buffer.lerp_(value.to(buffer.dtype), factor)

    def start_recording(self) -> None:
        """Zero the accumulators and switch to "record" mode."""
        self._recorded = None
        self._stats_mode = "record"

    def _record(self, count: float, mean: Tensor, ex2: Tensor) -> None:
        """Add one batch's per-statistic mean and E[x^2] over `count` elements each.

        Accumulates in place in float64 (three small ops a batch, no host sync), so recording
        costs next to nothing beside the layer's forward.
        """
        mean64 = mean.detach().to(torch.float64).flatten()
        ex2_64 = ex2.detach().to(torch.float64).flatten()
        if self._recorded is None:
            self._recorded = torch.zeros(3, mean64.numel(), dtype=torch.float64, device=mean.device)
        acc = self._recorded
        acc[0].add_(float(count))
        acc[1].add_(mean64, alpha=float(count))
        acc[2].add_(ex2_64, alpha=float(count))

    def recorded_moments(self) -> Tensor:
        """The accumulators as one (3, S) float64 tensor: counts, sums of n*mean, of n*E[x^2]."""
        if self._recorded is None:
            raise ValueError(
                f"{type(self).__name__}: nothing recorded; call start_recording() and run "
                "forward passes first"
            )
        return self._recorded.clone()

    def load_recorded_moments(self, moments: Tensor) -> None:
        """Replace the accumulators (e.g. with their all_reduce over DDP ranks)."""
        if moments.dim() != 2 or moments.shape[0] != 3:
            raise ValueError(
                f"{type(self).__name__}: recorded moments must have shape (3, S), got "
                f"{tuple(moments.shape)}"
            )
        self._recorded = moments.detach().to(torch.float64).clone()

    def finish_recording(self) -> None:
        """Write the population mean and biased total variance to the buffers; back to "ema"."""
        moments = self.recorded_moments()
        count = moments[0]
        if not bool((count > 0).all()):
            raise ValueError(f"{type(self).__name__}: nothing recorded for some statistics")
        mean = moments[1] / count
        ex2 = moments[2] / count
        self._load_population(mean, ex2)
        self._recorded = None
        self._stats_mode = "ema"

    def _load_population(self, mean: Tensor, ex2: Tensor) -> None:
        """Write a population mean and E[x^2] (float64, per statistic) into the buffers: by
        default the mean and the biased variance into the two `population_buffers`."""
        mean_buffer, var_buffer = self.population_tensors()
        mean_buffer.copy_(mean)
        var_buffer.copy_(population_var(mean, ex2))


class PopulationNorm(NormLayer, PopulationStats, VirtualDevices):
    """Base of the batch-dependent layers that are not torch's BatchNorm (bgn, batch_group, brn):
    a per-channel affine (weight 1, bias 0), the two `population_buffers` of `statistics`
    entries each (zeros, ones: the mean-like and the variance-like one) and the batch counter,
    registered in that order (the state-dict layout)."""

    batch_dependent = True

    def __init__(
        self, num_channels: int, statistics: int, momentum: float | None, eps: float
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.momentum = momentum
        self.eps = eps
        self._init_affine(num_channels)
        first, second = self.population_buffers
        self.register_buffer(first, torch.zeros(statistics))
        self.register_buffer(second, torch.ones(statistics))
        self.register_buffer(self.population_counter, torch.tensor(0, dtype=torch.long))


def population_var(mean: Tensor, ex2: Tensor) -> Tensor:
    """Biased variance E[x^2] - mean^2, clamped at zero against rounding."""
    return (ex2 - mean * mean).clamp_min(0.0)


def upcast(x: Tensor) -> Tensor:
    """`x` in float32 if it is half or bfloat16 (statistics are computed in fp32 under AMP)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def moments(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and E[x^2] over `dims` as float64, without gradient (for recording).

    Computed in two stages, which is both fast and accurate: a two-pass mean and biased variance
    over the contiguous innermost run of `dims` (per sample and channel for BN; a cheap
    vectorized reduction, unlike `torch.var_mean` over (0, 2, 3), which costs several times a
    BN forward on CPU), then the remaining dims are averaged in float64 as E[var + mean^2]
    (equal counts per slice, so this is the exact law of total variance). Falls back to
    `torch.var_mean` for layouts without such a run.
    """
    with torch.no_grad():
        x = upcast(x.detach())
        ndim = x.dim()
        reduced = sorted({d % ndim for d in dims})
        if _is_channels_last(x) and reduced == [0, 2, 3]:
            n, c = x.shape[:2]  # (N, H, W, C) in memory: slices of H*W per sample
            return _two_stage(x.permute(0, 2, 3, 1).reshape(n, -1, c), inner=1, outer=(0,))
        inner = 0
        while ndim - 1 - inner in reduced:
            inner += 1
        if inner == 0 or not x.is_contiguous():
            var, mean = torch.var_mean(x, dim=tuple(reduced), unbiased=False)
            mean64 = mean.to(torch.float64)
            return mean64, var.to(torch.float64) + mean64 * mean64
        flat = x.flatten(ndim - inner) if inner > 1 else x
        return _two_stage(flat, inner=-1, outer=tuple(d for d in reduced if d < ndim - inner))


def _is_channels_last(x: Tensor) -> bool:
    """Whether `x` is a 4-d tensor laid out channels_last (and not also plain contiguous)."""
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _two_stage(x: Tensor, inner: int, outer: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Two-pass mean and variance over dim `inner`, then E over `outer` in float64."""
    mean = x.mean(inner, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(inner)
    mean64 = mean.squeeze(inner).to(torch.float64)
    ex2 = var.to(torch.float64) + mean64 * mean64
    if outer:
        return mean64.mean(outer), ex2.mean(outer)
    return mean64, ex2


def record_batch_norm(
    layer: PopulationStats,
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Batch-normalize `x` (N, C, *) per channel and record the batch moments in `layer`.

    One native kernel gives both: `F.batch_norm` in training mode with throwaway running
    buffers and momentum 1 leaves the batch mean and the unbiased batch variance in them, so
    the record mode of a BN-like layer costs what its training forward costs. The output
    equals `F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)`.
    """
    n, channels = x.shape[:2]
    count = x.numel() // channels
    if count < 2:
        raise ValueError(f"record_batch_norm needs more than one value per channel, got {count}")
    y, mean, var = chunk_batch_norm(x.reshape(n, channels, -1), n, weight, bias, eps)
    record_chunk_statistics(layer, mean, var, count)
    return y.view_as(x)


def record_chunk_statistics(layer: PopulationStats, mean: Tensor, var: Tensor, count: int) -> None:
    """Record batch statistics of k equal chunks in `layer`: per-chunk means and unbiased
    variances (k, S), each over `count` elements per statistic (per ghost batch or virtual
    device), as chunk_batch_norm returns them."""
    mean64 = mean.to(torch.float64).reshape(-1, mean.shape[-1])
    biased = var.to(torch.float64).reshape(mean64.shape) * ((count - 1) / count)
    layer._record(count * mean64.shape[0], mean64.mean(0), (biased + mean64 * mean64).mean(0))


def population_layers(model: nn.Module) -> list[PopulationStats]:
    """Every layer of `model` with running (population) statistics: what PreciseBN, FrozenBN
    and batch-statistics evaluation act on. A batch_group layer with examples_per_group=1 is
    one of them although it is not batch-dependent."""
    return [m for m in model.modules() if isinstance(m, PopulationStats)]


def set_stats_mode(model: nn.Module, mode: str) -> int:
    """Set `mode` on every layer with running statistics; "record" also zeroes accumulators.

    Returns the number of layers changed.
    """
    check_stats_mode(mode)
    count = 0
    for layer in population_layers(model):
        if mode == "record":
            layer.start_recording()
        else:
            layer.stats_mode = mode
        count += 1
    return count


class SavedState:
    """What `state_guard` saved of one model; `restore()` puts it back (any number of times)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: bool,
        stats_modes: bool,
        population: bool,
        state_dict: bool,
        virtual_batch_size: bool,
        grads: bool,
    ) -> None:
        self.model = model
        self.training = model.training if mode else None
        self.stats_modes = (
            [(layer, layer.stats_mode) for layer in population_layers(model)]
            if stats_modes
            else None
        )
        self.population = (
            [t.detach().clone() for t in _population_tensors(model)] if population else None
        )
        self.state = {k: v.clone() for k, v in model.state_dict().items()} if state_dict else None
        self.saves_virtual_batch_size = virtual_batch_size
        self.virtual_batch_size = virtual_batch_size_of(model) if virtual_batch_size else None
        self.grads = (
            [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
            if grads
            else None
        )

    @torch.no_grad()
    def restore(self) -> None:
        """Put back everything saved, in place (the model's tensors stay the same objects)."""
        model = self.model
        if self.state is not None:
            model.load_state_dict(self.state)
        if self.population is not None:
            for tensor, saved in zip(_population_tensors(model), self.population, strict=True):
                tensor.copy_(saved)
        if self.stats_modes is not None:
            for layer, stats_mode in self.stats_modes:
                layer.stats_mode = stats_mode
        if self.saves_virtual_batch_size:
            set_virtual_batch_size(model, self.virtual_batch_size)
        if self.training is not None:
            model.train(self.training)  # every submodule back to the model's own mode
        if self.grads is not None:
            for param, grad in self.grads:
                param.grad = grad


def _population_tensors(model: nn.Module) -> list[Tensor]:
    """Every running-statistics buffer of `model`, layer by layer in module order."""
    return [t for layer in population_layers(model) for t in layer.population_tensors()]


@contextmanager
def state_guard(
    model: nn.Module,
    *,
    mode: bool = False,
    stats_modes: bool = False,
    population: bool = False,
    state_dict: bool = False,
    virtual_batch_size: bool = False,
    grads: bool = False,
) -> Iterator[SavedState]:
    """Save the chosen parts of `model`'s state on entry and restore them on exit, also when the
    block raises; what is not chosen (each part defaults to False) is left as the block leaves it.

    The parts: `mode`, the model's train/eval mode (restored with `model.train(saved)`, which
    sets every submodule to it); `stats_modes`, each population layer's `stats_mode`;
    `population`, the values of the running-statistics buffers (`population_tensors()`);
    `state_dict`, every tensor of `model.state_dict()` (parameters, all buffers and counters);
    `virtual_batch_size`, the chunk size the batch-dependent layers normalize with; `grads`, the
    parameters' gradients (None included). Evaluation and inspection change these on the way
    (eval mode, "batch" or "record" statistics, re-estimated buffers, train-mode forwards) and
    must leave the model as they found it: the run's own statistics, checkpoints and training
    go on unchanged. The yielded SavedState's `restore()` resets the model within the block,
    e.g. between several estimates from the same starting point.
    """
    saved = SavedState(
        model,
        mode=mode,
        stats_modes=stats_modes,
        population=population,
        state_dict=state_dict,
        virtual_batch_size=virtual_batch_size,
        grads=grads,
    )
    try:
        yield saved
    finally:
        saved.restore()
