"""normlab's LightningModule: exact epoch metrics without per-step host reads, and a diverged
step that never reaches the weights."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.job.lit import Classifier, guard_optimizer, optimizer_step_hooks
from normlab.job.optim import SGDWithDecayTargets

pytestmark = pytest.mark.fast  # in-process: make test-fast

OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}
SCHED = {"name": "step", "warmup_epochs": 0, "milestones": []}  # a constant rate


def _data(steps: int, batch: int = 4, nan_at: int | None = None) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, 6, generator=g)
    y = torch.randint(0, 3, (steps * batch,), generator=g)
    if nan_at is not None:
        x[nan_at * batch] = math.nan  # one sample of that step: its loss is NaN
    return DataLoader(TensorDataset(x, y), batch_size=batch)  # fixed order


def _trainer(**kwargs: object) -> L.Trainer:
    args = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 5,
    }
    return L.Trainer(**{**args, **kwargs})


class Recorder(L.Callback):
    """Per-step losses, correct predictions and weights, as a plain loop would see them."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.correct = 0
        self.samples = 0
        self.weights: list[Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.weights.append(pl_module.model.weight.detach().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            logits = pl_module.model(batch[0])
            self.losses.append(float(nn.functional.cross_entropy(logits, batch[1])))
            self.correct += int((logits.argmax(1) == batch[1]).sum())
            self.samples += len(batch[1])


def test_epoch_loss_and_accuracy_are_exact_means_over_the_steps() -> None:
    torch.manual_seed(0)
    module = Classifier(nn.Linear(6, 3), 3, {**OPTIM, "lr": 0.0}, SCHED, lr=0.0)
    recorder = Recorder()
    trainer = _trainer(callbacks=[recorder])
    trainer.fit(module, train_dataloaders=_data(12))
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss_epoch"]) == pytest.approx(
        sum(recorder.losses) / len(recorder.losses), rel=1e-6
    )
    assert float(metrics["train/acc"]) == pytest.approx(recorder.correct / recorder.samples)
    assert module.last_train_loss == pytest.approx(recorder.losses[-1], rel=1e-6)
    assert not module.diverged and trainer.global_step == 12


def test_nan_loss_ends_the_run_as_diverged_with_finite_weights() -> None:
    torch.manual_seed(0)
    module = Classifier(nn.Linear(6, 3), 3, OPTIM, SCHED, lr=0.1)
    recorder = Recorder()
    trainer = _trainer(callbacks=[recorder], max_epochs=3)
    trainer.fit(module, train_dataloaders=_data(12, nan_at=2))  # steps 0, 1, 2 (NaN), ...
    assert module.diverged
    assert module.divergence_reason == "train loss nan at step 2"
    # Read back at step 5 (log_every_n_steps): the run stopped there, not after 3 epochs.
    assert trainer.global_step == 5 and trainer.should_stop
    assert torch.isfinite(module.model.weight).all() and torch.isfinite(module.model.bias).all()
    # Steps 0 and 1 updated the weights; the NaN step and every step after it changed nothing.
    assert not torch.equal(recorder.weights[0], recorder.weights[1])
    for after in recorder.weights[2:]:
        torch.testing.assert_close(after, recorder.weights[1], rtol=0, atol=0)


def test_loss_above_the_threshold_is_divergence_too() -> None:
    module = Classifier(nn.Linear(6, 3), 3, OPTIM, SCHED, lr=0.1, loss_threshold=1e-9)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, train_dataloaders=_data(3))  # the epoch ends before step 5: read back
    assert module.diverged and module.divergence_reason.startswith("train loss ")
    assert module.divergence_reason.endswith("at step 0") and trainer.current_epoch == 1


def test_guarded_optimizer_skips_its_whole_update_on_the_flag() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    reference = nn.Linear(5, 2)
    reference.load_state_dict(model.state_dict())
    flag = torch.zeros(1)
    guarded = SGDWithDecayTargets(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    guard_optimizer(guarded, flag)
    x = torch.randn(8, 5)
    for step in range(4):
        flag.fill_(1.0 if step == 2 else 0.0)
        for net, opt in ((model, guarded), (reference, plain)):
            opt.zero_grad()
            net(x).square().sum().backward()
            if net is reference and step == 2:
                continue  # the plain optimizer skips that step on the host
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_guard_refuses_other_optimizers() -> None:
    with pytest.raises(TypeError, match="needs an optimizer built by normlab"):
        guard_optimizer(torch.optim.Adam(nn.Linear(2, 2).parameters()), torch.zeros(1))


def test_optimizer_step_hooks_are_found_once() -> None:
    class Stateful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def on_optimizer_step(self) -> None:
            self.calls += 1

    inner = Stateful()
    hooks = optimizer_step_hooks(nn.Sequential(nn.Linear(2, 2), nn.Sequential(inner)))
    assert len(hooks) == 1
    hooks[0]()
    assert inner.calls == 1


class CountsSteps(nn.Linear):
    """A layer with a window of past steps, as CBN: it must hear of every optimizer step once."""

    def __init__(self) -> None:
        super().__init__(6, 3)
        self.steps_heard = 0

    def on_optimizer_step(self) -> None:
        self.steps_heard += 1


@pytest.mark.parametrize("accumulate", [1, 3])
def test_stateful_layers_hear_of_each_optimizer_step_once(accumulate: int) -> None:
    model = CountsSteps()
    module = Classifier(model, 3, OPTIM, SCHED, lr=0.1)
    trainer = _trainer(max_epochs=2, accumulate_grad_batches=accumulate)
    trainer.fit(module, train_dataloaders=_data(6))
    assert trainer.global_step == 12 // accumulate
    assert model.steps_heard == trainer.global_step
