"""Signals that interrupt training on a cluster, and what survives them.

SLURM warns a job before it takes the node away: submitit's signal (USR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise) `signal_delay_s` before the time limit, and at
preemption on clusters that send the job's own signal; SIGTERM at preemption with a grace time;
USR1 when someone asks for a checkpoint (`scancel --signal=USR1 <job>`). SignalCheckpoint turns
each into a checkpoint taken at the end of the running training batch, so no partial epoch is
lost, then:

- USR1, and SIGTERM under SLURM: training goes on (under a grace time SLURM requeues the job
  when the grace time ends; the requeued job resumes from that checkpoint);
- submitit's signal: submitit's own handler requeues the job and exits. When SLURM already
  requeued it (preemption with the job's signal), `scontrol requeue` fails; that is the
  expected case and the job exits the same way, never recording a failure;
- the same signal outside submitit: the run stops, recorded `interrupted`; the same command
  resumes it;
- SIGTERM and SIGINT outside SLURM (docker stop, Kubernetes, systemd, a CI cancel, Ctrl-C):
  the same, a checkpoint at the end of the running batch, then the run stops, recorded
  `interrupted`, and the command exits non-zero (a sweep stops and prints its summary line);
  a second Ctrl-C while the first waits for its batch to end stops at once.

normlab.data.resumable.ResumableLoader makes such a mid-epoch checkpoint resume exactly.
RunClock carries the wall time of earlier attempts through checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

# What a pending signal asks for; a higher one wins over a lower one pending at the same time.
CONTINUE, REQUEUE, STOP = 1, 2, 3


def submitit_signal() -> signal.Signals:
    """The signal submitit requeues on (its SUBMITIT_PREEMPT_SIGNAL setting, USR2 by default)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return signal.Signals[f"SIG{name}"]


class SignalCheckpoint(L.Callback):
    """Checkpoint mid-epoch on a cluster's warning signal, then go on, requeue or stop (see the
    module docstring). Installed when training starts; Lightning restores the previous
    handlers at the end of fit."""

    def __init__(self, last_path: Path | None, slurm: bool) -> None:
        self.last_path = last_path
        self.slurm = slurm
        self.pending = 0
        self.pending_signal: signal.Signals | None = None
        self.previous: dict[signal.Signals, Any] = {}
        self.checkpoints = 0
        self.interrupted = False  # stopped on the signal (outside submitit): resume later

    def actions(self) -> dict[signal.Signals, int]:
        """The signals handled here and what each asks for."""
        actions = {signal.SIGUSR1: CONTINUE}
        if self.slurm:
            actions[signal.SIGTERM] = CONTINUE
            actions[submitit_signal()] = REQUEUE
        else:
            actions[signal.SIGTERM] = STOP
            actions[signal.SIGINT] = STOP
        return actions

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and not self.slurm:
            return  # a signal reaches one rank only; checkpoints need every rank
        for signum, action in self.actions().items():
            self.previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler(action))

    def _handler(self, action: int) -> Callable[[int, FrameType | None], None]:
        def request(signum: int, frame: FrameType | None) -> None:
            if action == STOP and self.pending == STOP and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, not at the batch's end
            if action >= self.pending:
                self.pending, self.pending_signal = action, signal.Signals(signum)

        return request

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        self._serve(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._serve(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = 0  # training is over: nothing left to save or requeue

    def _serve(self, trainer: L.Trainer) -> None:
        if not self.previous:
            return  # no handlers installed (several ranks outside SLURM)
        pending = self.pending
        if trainer.world_size > 1:  # every rank saves together, or none does (one all-reduce
            # of one number per step, under SLURM with several ranks only)
            flag = torch.tensor(float(pending), device=trainer.strategy.root_device)
            pending = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if not pending:
            return
        signum = self.pending_signal or submitit_signal()
        self.pending, self.pending_signal = 0, None
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if self.last_path is not None:
            trainer.save_checkpoint(self.last_path)
            self.checkpoints += 1
            _say(trainer, f"{signum.name}: checkpoint at {where} in {self.last_path}")
        else:
            _say(trainer, f"{signum.name} at {where}: no checkpoint (callbacks.checkpoint off)")
        if pending == STOP:
            self._stop(trainer, signum)
        elif pending == REQUEUE:
            self._hand_over(trainer, signum)

    def _hand_over(self, trainer: L.Trainer, signum: signal.Signals) -> None:
        previous = self.previous.get(signum)
        if not callable(previous):  # not under submitit: stop; the same command resumes
            self._stop(trainer, signum)
            return
        try:
            previous(signum, None)  # submitit: re-submit this job and exit
        except subprocess.SubprocessError as error:
            # Preemption with the job's own signal: SLURM requeued the job before submitit's
            # `scontrol requeue` ran ("Job is pending execution"). The job resumes all the same.
            _say(trainer, f"SLURM requeues this job itself ({error}); exiting to resume later")
            sys.exit(-1)

    def _stop(self, trainer: L.Trainer, signum: signal.Signals) -> None:
        """End training after this batch; the run is recorded `interrupted` and the same
        command resumes it from the checkpoint just taken."""
        _say(trainer, f"{signum.name}: stopping; run the same command again to resume")
        trainer.should_stop = True
        # Lightning validates when a run stops early: a full pass over the validation set (a
        # minute on CPU, beyond docker stop's 10 s grace) whose numbers describe half an epoch
        trainer.limit_val_batches = 0
        for callback in getattr(trainer, "checkpoint_callbacks", []):
            # Lightning would save again as the stopped epoch ends, overwriting the
            # mid-epoch checkpoint with one that resumes at the next epoch
            callback._last_global_step_saved = trainer.global_step
        self.interrupted = True
        global _stopped_by
        _stopped_by = signum


_stopped_by: signal.Signals | None = None  # the signal that stopped the last run of this process


def take_stop_signal() -> signal.Signals | None:
    """The signal (SIGTERM, SIGINT outside SLURM, or a requeue signal outside submitit) that
    stopped the run that just ended in this process, once; None when none did."""
    global _stopped_by
    stopped, _stopped_by = _stopped_by, None
    return stopped


def _say(trainer: L.Trainer, message: str) -> None:
    if trainer.global_rank == 0:
        print(f"normlab: {message}", flush=True)


class RunClock(L.Callback):
    """Wall time, CPU time and attempts of a job across requeues: every checkpoint carries the
    time spent up to it, so a resumed attempt adds its own time to the earlier ones'. The CPU
    time is this process's (all its threads); None where an earlier attempt's checkpoint was
    written before normlab counted it."""

    def __init__(self) -> None:
        self.started = time.time()
        self.cpu_started = time.process_time()
        self.earlier_s = 0.0  # earlier attempts, up to the checkpoint this one resumed from
        self.earlier_cpu_s: float | None = 0.0
        self.attempt = 1

    def cpu_s(self) -> float | None:
        """CPU seconds of this job so far, earlier attempts included (None: not known)."""
        if self.earlier_cpu_s is None:
            return None
        return self.earlier_cpu_s + time.process_time() - self.cpu_started

    def state_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.earlier_s + time.time() - self.started,
            "cpu_s": self.cpu_s(),
            "attempt": self.attempt,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_s = float(state_dict.get("wall_s", 0.0))
        cpu = state_dict.get("cpu_s")
        self.earlier_cpu_s = None if cpu is None else float(cpu)
        self.attempt = int(state_dict.get("attempt", 0)) + 1
