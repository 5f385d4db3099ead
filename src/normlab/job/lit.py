"""The LightningModule: cross-entropy classification with normlab's optimizer settings.

Per training step it queues only device work (no `.item()`, no collective): the step's loss goes
into a device buffer and a device flag marks a diverged step. Every `trainer.log_every_n_steps`
steps and at the end of each epoch one transfer reads the buffer back: the step loss is logged,
the epoch mean is kept exactly, and a flagged step ends the run as 'diverged' (all DDP ranks
decide together). A flagged step never changes the weights: the optimizer runs its fused kernel
with `found_inf` set to the flag, which skips the whole update on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from normlab.job.optim import DecayTargets, build_optimizer, lr_lambda, optimizer_factory

EPOCH_SO_FAR = "normlab_epoch_so_far"  # checkpoint key: the running epoch's loss and accuracy sums


def guard_optimizer(optimizer: torch.optim.Optimizer, found_inf: Tensor) -> None:
    """Make `optimizer` skip its whole update (weights, momentum) whenever `found_inf` is 1.

    The optimizers normlab.job.optim builds (any `optim._target_`) guard themselves
    (`DecayTargets.skip_steps_when`: fused kernels read the flag on the device as AMP's
    GradScaler does, others on the host). Called again after a checkpoint restored the
    parameter groups (they carry the `fused` setting)."""
    if not isinstance(optimizer, DecayTargets):
        raise TypeError(
            "the divergence guard needs an optimizer built by normlab.job.optim.build_optimizer, "
            f"got {type(optimizer).__name__}"
        )
    optimizer.skip_steps_when(found_inf)


def optimizer_step_hooks(model: nn.Module) -> list[Callable[[], None]]:
    """The `on_optimizer_step` hooks of `model`'s stateful layers (CBN's window), found once."""
    hooks = []
    for module in model.modules():
        hook = getattr(module, "on_optimizer_step", None)
        if callable(hook):
            hooks.append(hook)
    return hooks


class Classifier(L.LightningModule):
    """Trains `model` with the configured optimizer (SGD, AdamW or any torch optimizer); logs
    loss, top-1 (and top-5 above 10 classes); flags divergence."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optim_cfg: Mapping[str, Any],
        sched_cfg: Mapping[str, Any],
        lr: float,
        loss_threshold: float = 1e4,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = dict(optim_cfg)
        optimizer_factory(self.optim_cfg, lr)  # a bad optim._target_ or argument: refused now
        self.sched_cfg = dict(sched_cfg)
        self.lr = lr
        self.loss_threshold = loss_threshold
        self.diverged = False
        self.divergence_reason = ""
        self.last_train_loss: float | None = None  # host copy of the latest step loss read back
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc5 = (
            torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, top_k=5)
            if num_classes > 10
            else None
        )
        # Device-side training state (never saved): 1.0 once a step diverged (the optimizer's
        # found_inf), the losses since the last read-back, correct predictions this epoch.
        self.register_buffer("_bad", torch.zeros(1), persistent=False)
        self.register_buffer("_window", torch.zeros(1), persistent=False)
        self.register_buffer("_correct", torch.zeros((), dtype=torch.long), persistent=False)
        self._filled = 0  # losses in _window not read back yet
        self._window_start = 0  # global step of _window[0]
        self._loss_sum = 0.0  # host, float64: losses read back this epoch, up to a divergence
        self._summed = 0  # losses in _loss_sum
        self._samples = 0  # training samples this epoch
        self._step_hooks: list[Callable[[], None]] = []
        self._steps_notified = 0
        self._epoch_so_far: dict[str, Any] | None = None  # from a checkpoint, until training

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ----------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        # float32 whatever the module's precision (64-true converts buffers): the fused
        # optimizer and the non-finite check read it as AMP's found_inf
        self._bad = self._bad.float()
        self._step_hooks = optimizer_step_hooks(self.model)
        self._steps_notified = self.global_step  # resumed runs start at their step
        for optimizer in self.trainer.optimizers:
            guard_optimizer(optimizer, self._bad)
        size = self.trainer.log_every_n_steps or 50  # log_every_n_steps=0: read back every 50
        if self._window.numel() < size:
            self._window = torch.zeros(size, device=self._bad.device)
        self._resume_epoch_means()

    def on_train_epoch_start(self) -> None:
        self._filled, self._window_start = 0, self.global_step
        self._loss_sum, self._summed, self._samples = 0.0, 0, 0
        self._correct.zero_()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The epoch's running means so far: a run resumed from a mid-epoch checkpoint (a
        # cluster's warning signal) ends the epoch with the means an uninterrupted run has.
        self._read_back(log_step=False)
        checkpoint[EPOCH_SO_FAR] = {
            "loss_sum": self._loss_sum,
            "summed": self._summed,
            "samples": self._samples,
            "correct": int(self._correct.item()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._epoch_so_far = checkpoint.get(EPOCH_SO_FAR)

    def _resume_epoch_means(self) -> None:
        """Continue the means of a checkpoint's unfinished epoch (Lightning calls no
        on_train_epoch_start when it resumes mid-epoch; a fresh epoch resets them there)."""
        state, self._epoch_so_far = self._epoch_so_far, None
        if state is None:
            return
        self._loss_sum, self._summed = float(state["loss_sum"]), int(state["summed"])
        self._samples = int(state["samples"])
        self._correct.fill_(int(state["correct"]))
        self._window_start = self.global_step

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """An (images, labels) pair moves with two calls, not Lightning's generic traversal."""
        if (
            isinstance(batch, list | tuple)
            and len(batch) == 2
            and all(isinstance(item, Tensor) for item in batch)
        ):
            return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        value = loss.detach()
        if self._filled == 0:
            self._window_start = self.global_step
        self._window[self._filled] = value
        self._filled += 1
        # NaN, inf or above the threshold: `not (value <= threshold)` is all three at once.
        self._bad.copy_(torch.where(value <= self.loss_threshold, self._bad, 1.0))
        self._correct.add_((logits.detach().argmax(dim=1) == labels).sum())
        self._samples += labels.shape[0]
        if self.trainer.world_size > 1:
            # Gradients are averaged over ranks, so one rank's diverged loss must reach all of
            # them: a flagged loss turns every gradient into NaN, which each rank then detects
            # in on_after_backward and skips together.
            loss = loss * torch.where(self._bad[0] > 0, math.nan, 1.0)
        return loss

    def on_after_backward(self) -> None:
        if self.trainer.world_size > 1:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            torch._amp_foreach_non_finite_check_and_unscale_(
                grads, self._bad, self._bad.new_ones(1)
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step != self._steps_notified:  # an optimizer step ended this batch
            self._steps_notified = self.global_step  # (not so while accumulating gradients)
            for hook in self._step_hooks:  # stateful layers (CBN's window) learn of it
                hook()
        every = self.trainer.log_every_n_steps
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if (
            last
            or self._filled >= self._window.numel()
            or (every and self.global_step % every == 0)
        ):
            self._read_back()

    def _read_back(self, log_step: bool = True) -> None:
        """One transfer: the losses since the last read-back and the divergence flag; log the
        latest step loss (not at epoch end, where Lightning refuses step logs: a run stopped
        mid-epoch by max_steps ends there with unread losses); all ranks agree whether to stop."""
        if self._filled == 0:
            return
        losses = self._window[: self._filled].tolist()
        bad = bool(self._bad.item())
        start, self._filled = self._window_start, 0
        first = next((i for i, v in enumerate(losses) if not v <= self.loss_threshold), None)
        good = losses if first is None else losses[:first]  # the epoch mean stops at divergence
        self._loss_sum += math.fsum(good)
        self._summed += len(good)
        self.last_train_loss = losses[-1]
        if log_step:
            self.log("train/loss_step", losses[-1], on_step=True, on_epoch=False)
        if not self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        self.diverged = True
        self.trainer.should_stop = True
        if first is not None:
            self.divergence_reason = f"train loss {losses[first]:.4g} at step {start + first}"
        elif not self.divergence_reason:
            self.divergence_reason = (
                f"non-finite gradients (a diverged loss on another rank) by step {self.global_step}"
            )

    def on_train_epoch_end(self) -> None:
        self._read_back(log_step=False)
        if self._summed == 0 or self._samples == 0:
            return
        # Exact epoch means; under DDP every rank has as many steps and samples, so the mean
        # of the ranks' means (sync_dist) is the mean over all of them.
        mean_loss = torch.tensor(self._loss_sum / self._summed, device=self._correct.device)
        accuracy = self._correct.double() / self._samples
        self.log("train/loss_epoch", mean_loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", accuracy.float(), on_step=False, on_epoch=True, sync_dist=True)

    # --------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        self.val_acc(logits, labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        if self.val_acc5 is not None:
            self.val_acc5(logits, labels)
            self.log("val/acc5", self.val_acc5, on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim_cfg, self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        batches = self.trainer.num_training_batches
        accumulate = self.trainer.accumulate_grad_batches
        steps_per_epoch = (
            max(1, math.ceil(batches / accumulate)) if math.isfinite(batches) else total
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.sched_cfg, total, steps_per_epoch)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
