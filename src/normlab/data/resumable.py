"""A training DataLoader that a mid-epoch checkpoint resumes exactly.

normlab.platform.interruptions checkpoints at the end of a training batch when a cluster warns a job;
this loader's state (batches served this epoch, the random state after them) goes into that
checkpoint, and a resumed run continues at the next batch with the same random state. Exact with
num_workers=0 (in-memory data sets), where the augmentations draw from the process's generators;
with workers the batch position is still exact.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader


def random_state() -> dict[str, Any]:
    """The process's generators (torch, CUDA, NumPy, Python) in types a weights-only load reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what random_state recorded."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableLoader(DataLoader):
    """A training DataLoader that a mid-epoch checkpoint resumes at the same batch.

    Lightning saves the state_dict of a loader that has one with every checkpoint and hands it
    back when a run resumes mid-epoch: the batches of this epoch already served and the random
    state after them. The resumed epoch draws (and drops) those batches, since the sampler's
    order depends only on (seed, epoch), then restores the random state before serving the next
    batch, so the rest of the epoch sees what an uninterrupted run sees.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Under DDP every rank has its own random state (seeded per rank); rank 0 writes the
        # checkpoint, so it holds every rank's (Lightning asks every rank for this state).
        return {"batches": self._served, "random_by_rank": _every_rank(random_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._serve(super().__iter__())

    def _serve(self, batches: Iterator[Any]) -> Iterator[Any]:
        # runs at the first batch, after Lightning handed back a resumed state
        resume, self._resume = self._resume, None
        self._served = 0
        if resume is not None:
            for _ in range(int(resume["batches"])):
                next(batches)
            self._served = int(resume["batches"])
            by_rank = resume["random_by_rank"]
            set_random_state(by_rank[_rank() if len(by_rank) > 1 else 0])
        for batch in batches:
            self._served += 1
            yield batch


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _every_rank(value: Any) -> list[Any]:
    """`value` of every DDP rank, in rank order (a one-item list outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class HandBackLoaderState(L.Callback):
    """Hands a mid-epoch checkpoint's loader state to the training loader when training starts.

    Lightning does so itself only when it builds the training loader after restoring the
    checkpoint; a learning-rate schedule that asks for `trainer.estimated_stepping_batches`
    (normlab's do) builds it before, and the state would be dropped. Lightning's own loader
    restore runs here instead, with its own test (only a run restarted mid-epoch)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restore = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
        if restore is not None:
            restore()
