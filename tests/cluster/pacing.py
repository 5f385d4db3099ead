"""A floor on the wall time of a training step, so that a cluster test's job lasts as long on a
fast machine as on a slow one (its interruptions must land while it runs)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class Pace(L.Callback):
    """Sleep after each training step that took less than `seconds`: a job lasts at least
    steps x seconds, whatever the machine. Only the wall time changes, never the numbers."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.started = time.monotonic()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        rest = self.seconds - (time.monotonic() - self.started)
        if rest > 0:
            time.sleep(rest)
