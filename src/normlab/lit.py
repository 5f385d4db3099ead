"""The LightningModule: cross-entropy classification with normlab's optimizer settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from normlab.norms import notify_optimizer_step
from normlab.optim import build_optimizer, lr_lambda


class Classifier(L.LightningModule):
    """Trains `model` with SGD; logs loss, top-1 (and top-5 above 10 classes); flags divergence."""

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
        self.sched_cfg = dict(sched_cfg)
        self.lr = lr
        self.loss_threshold = loss_threshold
        self.diverged = False
        self.divergence_reason = ""
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc5 = (
            torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, top_k=5)
            if num_classes > 10
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        value = loss.detach().item()
        bad = not math.isfinite(value) or value > self.loss_threshold
        # Under DDP every rank must skip the update together, or the others wait in all-reduce.
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            self.diverged = True
            self.divergence_reason = f"train loss {value:.4g} at step {self.global_step}"
            self.trainer.should_stop = True
            if self.trainer.world_size > 1:  # DDP cannot skip a step: zero gradients everywhere
                return torch.stack([(p * 0.0).sum() for p in self.parameters()]).sum()
            return None  # skip the update; the run stops with status 'diverged'
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

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

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then tell stateful layers (CBN's window) that an optimizer step happened."""
        super().optimizer_step(*args, **kwargs)
        notify_optimizer_step(self.model)

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
