"""Lightning callbacks that act on the population statistics of batch-dependent layers:
PreciseBN, FrozenBN, batch-statistics and example-weighed evaluation, and DDP reconciliation
(the running statistics averaged across real ranks, virtual ranks collapsed to their mean)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from normlab.data.tensors import NormalizeCollate, TensorImageDataset
from normlab.norms import is_norm_layer
from normlab.norms.population import PopulationStats, population_layers, state_guard
from normlab.norms.virtual import reconcile_virtual_ranks, set_virtual_batch_size
from normlab.stats.precise_bn import BatchAugmentedImages, update_population_stats


def training_loader(datamodule: L.LightningDataModule, batch_size: int, seed: int) -> DataLoader:
    """A shuffled loader over the training set (training augmentation) with its own batch size
    and RNG, so estimating statistics does not change the training data order.

    In-memory image sets are augmented a whole batch at a time (BatchAugmentedImages, same
    sample order and augmentation distribution, its own seeded generator); others go through
    their dataset and collate function sample by sample."""
    generator = torch.Generator().manual_seed(seed)
    dataset = datamodule.train_set  # type: ignore[attr-defined]
    collate = datamodule.collate  # type: ignore[attr-defined]
    if isinstance(dataset, TensorImageDataset) and isinstance(collate, NormalizeCollate):
        order = RandomSampler(dataset, generator=generator)  # the order shuffle=True gives
        return DataLoader(
            BatchAugmentedImages(dataset, collate, seed + 1),
            sampler=BatchSampler(order, batch_size, drop_last=False),
            batch_size=None,  # the dataset returns whole batches
            generator=generator,  # as below: worker seed first, then the permutation
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,  # update_population_stats skips a final batch of one itself
        generator=generator,
        collate_fn=collate,
    )


class PreciseBNCallback(L.Callback):
    """Before each validation (hence also after the last epoch), recompute the population
    statistics over `num_samples` training samples in batches of `batch_size`.

    With `virtual_devices` k > 1 each loader batch holds k batches of `batch_size`, and every
    batch-dependent layer takes per-chunk statistics of `batch_size` samples (what k ranks each
    estimating with batches of `batch_size` would record), at the speed of the larger batch.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int = 0, virtual_devices: int = 1
    ) -> None:
        if batch_size < 2:
            raise ValueError(f"precise_bn.batch_size must be >= 2, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.virtual_devices = virtual_devices
        self.updates = 0

    def recompute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run PreciseBN now on the trainer's training data."""
        model = pl_module.model  # type: ignore[attr-defined]
        loader = training_loader(
            trainer.datamodule,  # type: ignore[attr-defined]
            self.batch_size * self.virtual_devices,
            self.seed + trainer.current_epoch,
        )
        if self.virtual_devices == 1:
            update_population_stats(model, loader, self.num_samples)
        else:
            with state_guard(model, virtual_batch_size=True):  # back to the training chunk
                set_virtual_batch_size(model, self.batch_size)
                batches = whole_chunks(loader, self.batch_size, self.num_samples)
                update_population_stats(model, batches, self.num_samples)
        self.updates += 1

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or statistics_frozen(pl_module.model):  # type: ignore[attr-defined]
            return
        self.recompute(trainer, pl_module)


def statistics_frozen(model: nn.Module) -> bool:
    """Whether FrozenBN froze the population statistics: the model now trains with them as
    constants, so re-estimating them (with batch-statistics forwards) would change the network
    it learned; they stay as frozen."""
    return any(layer.stats_mode == "population" for layer in population_layers(model))


def whole_chunks(
    batches: Iterable[tuple[Tensor, Tensor]], chunk: int, num_samples: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches cut so that no device's batch of `chunk` samples is split: a batch
    (or the last of `num_samples`) that ends in a partial chunk serves its whole chunks, then
    the remainder alone, as one device's partial batch (unless it is a single sample)."""
    remaining = num_samples
    for inputs, targets in batches:
        take = min(len(inputs), remaining)
        whole = take - take % chunk
        if whole:
            yield inputs[:whole], targets[:whole]
        if take - whole >= 2:  # a one-sample batch is never used (update_population_stats)
            yield inputs[whole:take], targets[whole:take]
        remaining -= take
        if remaining <= 0:
            return


class FrozenBNCallback(L.Callback):
    """For the last `last_epochs` epochs train with population statistics (FrozenBN, Rethinking
    BN §2.4); optionally freeze gamma/beta of the batch-dependent layers too."""

    def __init__(
        self, last_epochs: int, freeze_affine: bool, precise_bn: PreciseBNCallback | None = None
    ) -> None:
        if last_epochs < 0:
            raise ValueError(f"frozen_bn.last_epochs must be >= 0, got {last_epochs}")
        self.last_epochs = last_epochs
        self.freeze_affine = freeze_affine
        self.precise_bn = precise_bn
        self.frozen_at_epoch: int | None = None

    def should_freeze(self, epoch: int, max_epochs: int) -> bool:
        """Whether `epoch` (0-based) is one of the last `last_epochs` of `max_epochs`."""
        return self.last_epochs > 0 and epoch >= max_epochs - self.last_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.should_freeze(trainer.current_epoch, int(trainer.max_epochs or 0)):
            return
        model = pl_module.model  # type: ignore[attr-defined]
        if self.frozen_at_epoch is None and self.precise_bn is not None:
            self.precise_bn.recompute(trainer, pl_module)  # freeze precise statistics
        for layer in population_layers(model):
            layer.stats_mode = "population"
            if self.freeze_affine:
                for param in layer.parameters():  # type: ignore[attr-defined]
                    param.requires_grad_(False)
        if self.frozen_at_epoch is None:
            self.frozen_at_epoch = trainer.current_epoch


class EvalStatsCallback(L.Callback):
    """Validation with each batch's own statistics (`mode="batch"`, Rethinking BN §2.3) and/or
    example-weighed population statistics (`alpha`, Four Things §3.2)."""

    def __init__(self, mode: str = "population", alpha: float = 0.0) -> None:
        if mode not in ("population", "batch"):
            raise ValueError(f"eval_stats must be population or batch, got '{mode}'")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"eval_alpha must be in [0, 1], got {alpha}")
        self.mode = mode
        self.alpha = alpha
        self._saved: list[str] = []
        self._saved_alpha: list[float] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = population_layers(pl_module.model)  # type: ignore[attr-defined]
        self._saved = [layer.stats_mode for layer in layers]
        self._saved_alpha = [layer.eval_alpha for layer in layers]
        for layer in layers:
            if self.mode == "batch":
                layer.stats_mode = "batch"
            if self.alpha > 0:
                set_eval_alpha(layer, self.alpha)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = population_layers(pl_module.model)  # type: ignore[attr-defined]
        for layer, mode, alpha in zip(layers, self._saved, self._saved_alpha, strict=False):
            layer.stats_mode = mode
            set_eval_alpha(layer, alpha)


def set_eval_alpha(layer: PopulationStats, alpha: float) -> None:
    """Set example-weighed inference on `layer`, a capability its class declares
    (`supports_eval_alpha`); alpha > 0 where it is not declared raises, naming the methods
    that have it."""
    if layer.supports_eval_alpha or alpha > 0:
        layer.eval_alpha = alpha


def batch_dependent_buffers(model: nn.Module) -> list[Tensor]:
    """The running statistics of batch-dependent normlab norm layers, each once.

    Each layer declares them (`population_buffers` of normlab.norms.population.PopulationStats,
    whatever their names), so every family (BN, ghost BN, batch renorm, ...) is covered without
    type checks or name guessing; a NormAct is skipped (its inner layer is visited itself).
    """
    found: dict[int, Tensor] = {}
    for module in model.modules():
        if is_norm_layer(module) and module.batch_dependent and isinstance(module, PopulationStats):
            for buffer in module.population_tensors():
                if buffer.is_floating_point():
                    found.setdefault(id(buffer), buffer)
    return list(found.values())


def average_across_ranks(buffers: list[Tensor]) -> None:
    """Replace each buffer by its mean over all DDP ranks (a no-op outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for buffer in buffers:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        buffer.div_(world)


class ReconcileNormBuffers(L.Callback):
    """Under DDP each rank updates its BN running statistics from its own batches only.

    Before every validation (which is also before the epoch's checkpoint) and at the end of
    each training epoch, the running_* buffers of batch-dependent norm layers are averaged
    across ranks with an all-reduce, so evaluation, checkpoints and the saved model use one
    set of population statistics, the same on every rank. Layers that keep per-virtual-rank
    state (virtual devices) collapse it to the ranks' mean at the same points.
    """

    def __init__(self) -> None:
        self.module: nn.Module | None = None
        self.resume_by_rank: list[list[Tensor]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.module = pl_module

    def state_dict(self) -> dict[str, Any]:
        """Every rank's own statistics, for a checkpoint taken mid-epoch (a cluster's warning
        signal): rank 0 writes only its own into the model's state, and each rank must resume
        with its own for the run to continue as an uninterrupted one would."""
        if self.module is None or not (dist.is_available() and dist.is_initialized()):
            return {}
        own = [buffer.detach().cpu() for buffer in batch_dependent_buffers(self.module)]
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, own)
        return {"by_rank": every}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume_by_rank = state_dict.get("by_rank")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self.resume_by_rank = self.resume_by_rank, None
        if saved is None or len(saved) != trainer.world_size:
            return  # an epoch-end checkpoint's statistics are the same on every rank
        with torch.no_grad():
            for buffer, value in zip(
                batch_dependent_buffers(pl_module), saved[trainer.global_rank], strict=True
            ):
                buffer.copy_(value)

    def _reconcile(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            average_across_ranks(batch_dependent_buffers(pl_module))
        reconcile_virtual_ranks(pl_module)  # virtual devices: the same, for emulated ranks

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reconcile(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reconcile(trainer, pl_module)
