"""A cluster's warning signals: a checkpoint at the end of the running batch, then go on,
requeue or stop, and a run resumed from that mid-epoch checkpoint ends exactly where an
uninterrupted run ends (normlab.platform.interruptions, normlab.data.resumable)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

import normlab.job.build
from normlab.platform.interruptions import REQUEUE, RunClock, SignalCheckpoint
from tests.helpers import run_in_process, shrunk

# 4 steps per epoch, 2 epochs; the signal arrives during step 5 (epoch 1, its second batch)
SMALL = shrunk("trainer.max_epochs=2", "data.train_samples=128", "batch_size=32", "logger=csv",
               "threads=1")  # fmt: skip
SIGNAL_STEP = 5


class SendSignal(L.Callback):
    """Sends `signum` to this process when the training batch of `step` starts."""

    def __init__(self, signum: int, step: int = SIGNAL_STEP) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _train(tmp_path: Path, name: str, signum: int | None = None) -> dict[str, Any]:
    extra = []
    if signum is not None:
        extra = [
            f"+callbacks.extra.signal._target_={__name__}.SendSignal",
            f"+callbacks.extra.signal.signum={signum}",
        ]
    return run_in_process([*SMALL, *extra], tmp_path / name)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def _same_run(a: dict[str, Any], b: dict[str, Any], dir_a: Path, dir_b: Path) -> None:
    assert (a["epochs"], a["steps"]) == (b["epochs"], b["steps"])
    for key in ("val_acc", "val_loss", "train_loss"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    wa, wb = _weights(dir_a), _weights(dir_b)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run ('full') and one stopped by the requeue signal mid-epoch
    ('stopped'), built as if SLURM hosted it; shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    _train(root, "full")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(normlab.job.build, "under_slurm", lambda: True)
        _train(root, "stopped", signal.SIGUSR2)  # submitit's signal, without submitit
    return root


def _read(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def test_requeue_signal_checkpoints_mid_epoch_and_the_resumed_run_is_exact(
    runs: Path, tmp_path: Path
) -> None:
    stopped = _read(runs / "stopped")
    assert stopped["status"] == "interrupted"
    assert stopped["steps"] == SIGNAL_STEP + 1, "checkpoint at the end of the signalled batch"
    shutil.copytree(runs / "stopped", tmp_path / "resumed")
    ckpt = torch.load(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert ckpt["global_step"] == SIGNAL_STEP + 1 and ckpt["epoch"] == 1

    (tmp_path / "resumed" / "error.log").write_text("an earlier attempt's traceback")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _train(tmp_path, "resumed")  # the same folder: resumes from last.ckpt
    assert resumed["status"] == "completed" and resumed["attempts"] == 2
    assert not (tmp_path / "resumed" / "error.log").exists(), "a stale error.log is removed"
    noise = [str(w.message) for w in caught if "exists and is not empty" in str(w.message)]
    assert not noise, "a resumed run writes into its checkpoints folder on purpose"
    assert resumed["earlier_attempts_s"] > 0
    assert resumed["wall_s"] > resumed["earlier_attempts_s"]
    assert 0 < resumed["earlier_attempts_cpu_s"] < resumed["cpu_s"]
    assert stopped["cpu_s"] >= resumed["earlier_attempts_cpu_s"]
    _same_run(_read(runs / "full"), resumed, runs / "full", tmp_path / "resumed")
    assert len(resumed["history"]) == 2


def test_mid_epoch_checkpoint_resumes_exactly_from_another_folder(
    runs: Path, tmp_path: Path
) -> None:
    """ckpt_path=<a mid-epoch checkpoint> in a new folder continues it exactly."""
    mid_epoch = runs / "stopped" / "checkpoints" / "last.ckpt"
    resumed = run_in_process([*SMALL, f"ckpt_path={mid_epoch}"], tmp_path / "elsewhere")
    _same_run(_read(runs / "full"), resumed, runs / "full", tmp_path / "elsewhere")


def test_usr1_checkpoints_and_training_goes_on(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signalled = _train(tmp_path, "usr1", signal.SIGUSR1)
    assert "SIGUSR1: checkpoint at epoch 1, step 6" in capsys.readouterr().out
    assert signalled["status"] == "completed" and signalled["attempts"] == 1
    _same_run(_read(runs / "full"), signalled, runs / "full", tmp_path / "usr1")


def test_sigterm_under_slurm_checkpoints_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Preemption with a grace time: SLURM requeues the job if it still runs when the grace
    time ends, so SIGTERM must not end it (Lightning's own handler would exit cleanly)."""
    monkeypatch.setattr(normlab.job.build, "under_slurm", lambda: True)
    signalled = _train(tmp_path, "term", signal.SIGTERM)
    assert "SIGTERM: checkpoint at epoch 1, step 6" in capsys.readouterr().out
    assert signalled["status"] == "completed" and signalled["epochs"] == 2


class _FakeTrainer:
    global_rank = 0
    should_stop = False


def test_a_requeue_that_slurm_already_did_exits_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Preemption with the job's own signal: SLURM requeues the job, so submitit's
    `scontrol requeue` fails ("Job is pending execution"); the job must exit for the requeue,
    not record a failure."""
    called = []

    def submitit_handler(signum: int, frame: Any) -> None:
        called.append(signum)
        raise subprocess.CalledProcessError(1, ["scontrol", "requeue", "7"])

    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    callback = SignalCheckpoint(None, slurm=True)
    assert callback.actions()[signal.SIGUSR2] == REQUEUE  # USR2: submitit's requeue signal
    callback.previous[signal.SIGUSR2] = submitit_handler
    trainer = _FakeTrainer()
    with pytest.raises(SystemExit) as exit_:
        callback._hand_over(trainer, signal.SIGUSR2)  # type: ignore[arg-type]
    assert called == [signal.SIGUSR2], "submitit's own handler is tried first"
    assert exit_.value.code == -1  # the code submitit's requeue exits with, not an error
    assert not callback.interrupted and not trainer.should_stop  # no stop for a later resume
    assert "SLURM requeues this job itself" in capsys.readouterr().out


def test_without_submitit_the_requeue_signal_stops_the_run() -> None:
    callback = SignalCheckpoint(None, slurm=True)
    callback.previous[signal.SIGUSR2] = signal.SIG_DFL
    trainer = _FakeTrainer()
    callback._hand_over(trainer, signal.SIGUSR2)  # type: ignore[arg-type]
    assert trainer.should_stop and callback.interrupted


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_outside_slurm_checkpoint_and_record_interrupted(
    tmp_path: Path, signum: signal.Signals
) -> None:
    stopped = _train(tmp_path, "stopped", signum)
    assert stopped["status"] == "interrupted"
    # no validation of the half epoch on the way out (it took a minute of a CPU run's exit)
    assert [e["epoch"] for e in stopped["history"]] == [0], stopped["history"]
    assert stopped["steps"] == SIGNAL_STEP + 1, "checkpoint at the end of the signalled batch"
    ckpt = torch.load(
        tmp_path / "stopped" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert ckpt["global_step"] == SIGNAL_STEP + 1


def test_sigterm_stops_a_sweep_with_its_summary_and_a_non_zero_exit(tmp_path: Path) -> None:
    from tests.helpers import run_train

    proc = run_train(
        [
            "-m",
            "seed=0,1",
            *[o for o in SMALL if not o.startswith(("callbacks.progress", "print_config"))],
            f"+callbacks.extra.signal._target_={__name__}.SendSignal",
            f"+callbacks.extra.signal.signum={int(signal.SIGTERM)}",
        ],
        tmp_path,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "SIGTERM: stopping; run the same command again to resume" in proc.stdout
    assert (
        "normlab: sweep finished: 2 jobs: 0 completed, 0 failed, 0 diverged, 1 interrupted; "
        "1 launched, 0 skipped as already finished, 0 refused, 0 unrecorded, 1 not started"
    ) in proc.stdout
    assert not (tmp_path / "sweep" / "1").exists(), "the later job never started"
    assert _read(tmp_path / "sweep" / "0")["status"] == "interrupted"


@pytest.mark.fast
def test_run_clock_adds_earlier_cpu_time_and_says_when_it_is_unknown() -> None:
    resumed = RunClock()
    resumed.load_state_dict({"wall_s": 10.0, "cpu_s": 7.5, "attempt": 1})
    cpu = resumed.cpu_s()
    assert cpu is not None and cpu >= 7.5 and resumed.attempt == 2
    assert resumed.state_dict()["cpu_s"] >= cpu
    older = RunClock()  # a checkpoint written before normlab counted CPU time
    older.load_state_dict({"wall_s": 10.0, "attempt": 1})
    assert older.cpu_s() is None and older.state_dict()["cpu_s"] is None
    assert older.earlier_s == 10.0
