"""EMA against PreciseBN on one model: the comparison at the core of Rethinking BN, Sec. 3.

A run keeps its own population statistics (the EMA, or PreciseBN with precise_bn.num_samples)
and, after every validation, is also evaluated with PreciseBN statistics over each of
`precise_bn.compare_samples` training samples, estimated from the current weights and then
thrown away. Both accuracies come from the same weights at the same epoch, which separate runs
give only by relying on training being independent of the running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from normlab.norms.population import state_guard
from normlab.results import compared_metric
from normlab.stats.callbacks import PreciseBNCallback, statistics_frozen
from normlab.stats.evaluate import evaluate_accuracy


class PreciseBNComparison(L.Callback):
    """Before each validation, the validation accuracy with PreciseBN statistics over each of
    `sample_counts` samples (logged as val/acc_precise_bn_<N>, so it lands in the run's history
    beside val/acc); the run's own statistics are restored after each estimate, so its own
    evaluation, its checkpoints and its training are those of a run without the comparison."""

    def __init__(
        self, sample_counts: Sequence[int], batch_size: int, seed: int = 0, virtual_devices: int = 1
    ) -> None:
        counts = sorted({int(n) for n in sample_counts})
        if not counts or counts[0] < 1:
            raise ValueError(
                f"precise_bn.compare_samples must be sample counts >= 1, got {list(sample_counts)}"
            )
        self.estimators = {
            n: PreciseBNCallback(n, batch_size, seed, virtual_devices) for n in counts
        }

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model  # type: ignore[attr-defined]
        if trainer.sanity_checking or statistics_frozen(model):
            return
        with state_guard(model, population=True) as own:
            for num_samples, estimator in self.estimators.items():
                estimator.recompute(trainer, pl_module)
                batches = trainer.datamodule.val_dataloader()  # type: ignore[attr-defined]
                accuracy = evaluate_accuracy(model, batches, pl_module.device)
                pl_module.log(compared_metric(num_samples), accuracy, on_epoch=True)
                own.restore()  # the next estimate starts from the run's own statistics
