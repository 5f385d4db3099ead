"""Observe a model's layers during one forward, leaving the model as it was."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from normlab.norms.population import state_guard


@torch.no_grad()
def forward_with_hooks(
    model: nn.Module, example: Tensor, handles: Sequence[RemovableHandle]
) -> None:
    """Run `model` once on `example` in eval mode without gradients, with the hooks behind
    `handles` attached; then (even if the forward fails) put the model back in the training
    mode it had and remove every hook.

    The hooks do the observing (which module made which tensor, what a layer saw). Eval mode
    keeps the forward from updating running statistics or depending on the batch, so tracing
    does not change the model; no gradient is needed to look. The mode is restored by
    `state_guard` (`model.train(saved)`), which sets every submodule to the model's own mode, as
    `model.eval()` set them all.
    """
    try:
        with state_guard(model, mode=True):
            model.eval()
            model(example)
    finally:
        for handle in handles:
            handle.remove()
