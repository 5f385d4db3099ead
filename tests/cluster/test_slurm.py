"""A 2-job sweep under a real SLURM (`hydra/launcher=slurm`), interrupted every way a cluster
does it: each job must end `completed` with the epochs, steps and metrics of an uninterrupted
sweep, and a job killed from outside must be recorded `failed` while the other completes.

`make test-cluster` runs these against the throw-away one-node SLURM of
../shared/tools/slurm_local.sh (root); the tests reconfigure it (grace time, preemption
signal) between cases. Skipped where `sbatch` is not available.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.cluster

SLURM_LOCAL = Path(
    os.environ.get("NORMLAB_SLURM_LOCAL", REPO_ROOT.parent / "shared" / "tools" / "slurm_local.sh")
)
if shutil.which("sbatch") is None:
    pytest.skip(
        "sbatch is not available: the cluster tests need SLURM "
        "(as root: ../shared/tools/slurm_local.sh start, or make test-cluster)",
        allow_module_level=True,
    )

# Two jobs of 24 epochs x 64 steps, each step paced to at least 50 ms (tests/cluster/pacing.py),
# so a job lasts at least 77 s on any machine (the node has two cores, one per job): long enough
# to be interrupted mid-epoch and to outlive KillWait (30 s: SLURM sends SIGTERM first, and
# normlab keeps training on SIGTERM) and a 15 s grace time, short enough for a test. Unpaced,
# a machine twice as fast as the one these tests were written on finished the jobs within
# KillWait, so requeues and cancels never took effect.
PACE = [
    "+callbacks.extra.pace._target_=tests.cluster.pacing.Pace",
    "+callbacks.extra.pace.seconds=0.05",
]
JOB_ARGS = [
    *PACE,
    "norm=bn,gn",
    "trainer.max_epochs=24",
    "batch_size=16",
    "data.train_samples=1024",
    "data.val_samples=256",
    "threads=1",
    "callbacks.progress=none",
    "print_config=false",
    "trainer.num_sanity_val_steps=0",
]
COMPARED = ("epochs", "steps", "val_acc", "val_loss")


def _cluster(grace_s: int = 0, preempt_signal: bool = False) -> dict[str, str]:
    """(Re)configure the local SLURM when this machine has the script; its client env."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(  # the jobs import tests.cluster.pacing
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    if SLURM_LOCAL.is_file() and os.geteuid() == 0:
        env.update(
            SLURM_LOCAL_GRACE_TIME=str(grace_s), SLURM_LOCAL_PREEMPT_SIGNAL=str(int(preempt_signal))
        )
        subprocess.run(
            ["bash", str(SLURM_LOCAL), "start"], env=env, check=True, capture_output=True
        )
        env["SLURM_CONF"] = str(
            Path(env.get("SLURM_LOCAL_DIR", "/tmp/slurm-local")) / "etc/slurm.conf"
        )
    elif grace_s or preempt_signal:
        pytest.skip("needs ../shared/tools/slurm_local.sh (as root) to set grace time/signal")
    return env


class Sweep:
    """`python train.py -m hydra/launcher=slurm ...` running in the background."""

    def __init__(self, folder: Path, env: dict[str, str], *extra: str) -> None:
        self.folder = folder
        self.env = env
        command = [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "-m",
            "hydra/launcher=slurm",
            f"hydra.sweep.dir={folder}",
            *JOB_ARGS,
            *extra,
        ]
        self.log = (folder.parent / f"{folder.name}.log").open("w")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True
        )

    def results(self) -> dict[int, dict[str, Any]]:
        found = {}
        for job in (0, 1):
            path = self.folder / str(job) / "results.json"
            if path.is_file():
                with contextlib.suppress(ValueError):
                    found[job] = json.loads(path.read_text())
        return found

    def job_id(self, job: int) -> str:
        return str(self.results()[job]["slurm_job_id"])

    def wait_for(self, condition: Any, what: str, timeout_s: float = 240) -> None:
        deadline = time.time() + timeout_s
        while not condition():
            if self.process.poll() is not None or time.time() > deadline:
                pytest.fail(f"{what}: not seen ({self.output()[-3000:]})")
            time.sleep(1)

    def wait_mid_training(self) -> None:
        """Both jobs started and past their first epoch's checkpoint: the next signal lands
        mid-epoch."""
        self.wait_for(
            lambda: all(
                (self.folder / str(job) / "checkpoints" / "last.ckpt").is_file() for job in (0, 1)
            ),
            "both jobs past epoch 0",
        )
        time.sleep(3)

    def finish(self, timeout_s: float = 600, returncode: int = 0) -> str:
        try:
            self.process.wait(timeout=timeout_s)
        finally:
            self.log.close()
        output = self.output()
        assert self.process.returncode == returncode, output[-3000:]
        return output

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.folder.parent / f"{self.folder.name}.log").read_text()


def slurm(env: dict[str, str], *args: str) -> str:
    return subprocess.run(list(args), env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The same sweep, never interrupted."""
    env = _cluster()
    sweep = Sweep(tmp_path_factory.mktemp("baseline") / "sweep", env)
    output = sweep.finish()
    assert "2 jobs: 2 completed" in output
    return sweep.results()


def _check_same(
    case: str, sweep: Sweep, baseline: dict[int, dict[str, Any]], min_attempts: int = 2
) -> None:
    results = sweep.results()
    for job in (0, 1):
        got, want = results[job], baseline[job]
        row = {key: (got.get(key), want.get(key)) for key in (*COMPARED, "attempts", "status")}
        print(f"\n{case} job {job}: (interrupted, uninterrupted) {row}")
        assert got["status"] == "completed", (case, job, got.get("error"))
        assert got["attempts"] >= min_attempts, (case, job, "was it interrupted at all?")
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], abs=1e-6), (case, job, key)


def _interrupt_both_mid_training(sweep: Sweep, env: dict[str, str], *command: str) -> str:
    """Wait until both jobs are past epoch 0, run `command <job id>` on each, and return the
    sweep's output once it has finished (it must exit 0)."""
    sweep.wait_mid_training()
    for job in (0, 1):
        slurm(env, *command, sweep.job_id(job))
    return sweep.finish()


@pytest.fixture
def local_cluster() -> Iterator[dict[str, str]]:
    env = _cluster()
    yield env
    _cluster()  # back to the defaults for the next case


@pytest.mark.parametrize(
    ("command", "case"),
    [
        pytest.param(("scontrol", "requeue"), "scontrol requeue", id="scontrol-requeue"),
        # what submitit takes for a preemption: checkpoint mid-epoch, requeue, resume exactly
        pytest.param(
            ("scancel", "--signal=USR2"), "USR2 (submitit's preemption signal)", id="scancel-usr2"
        ),
    ],
)
def test_requeued_from_outside(
    tmp_path: Path,
    baseline: dict[int, dict[str, Any]],
    local_cluster: dict[str, str],
    command: tuple[str, ...],
    case: str,
) -> None:
    """`scontrol requeue`, or `scancel --signal=USR2`, on both jobs mid-training: each is
    requeued and resumes exactly."""
    sweep = Sweep(tmp_path / "sweep", local_cluster)
    output = _interrupt_both_mid_training(sweep, local_cluster, *command)
    assert "2 jobs: 2 completed, 0 failed" in output
    _check_same(case, sweep, baseline)


def test_usr1_checkpoints_and_the_job_goes_on(
    tmp_path: Path, baseline: dict[int, dict[str, Any]], local_cluster: dict[str, str]
) -> None:
    sweep = Sweep(tmp_path / "sweep", local_cluster)
    output = _interrupt_both_mid_training(sweep, local_cluster, "scancel", "--signal=USR1")
    assert "2 jobs: 2 completed, 0 failed" in output
    logs = [path.read_text() for path in (tmp_path / "sweep" / ".submitit").rglob("*_log.out")]
    assert sum("SIGUSR1: checkpoint at epoch" in log for log in logs) == 2
    _check_same("USR1 (checkpoint request)", sweep, baseline, min_attempts=1)


def test_time_limit_checkpoints_mid_epoch(
    tmp_path: Path, baseline: dict[int, dict[str, Any]], local_cluster: dict[str, str]
) -> None:
    """A 3-minute time limit with USR2 90 s before it: each attempt starts, trains until the
    signal, checkpoints mid-epoch and is requeued; a job longer than its window still finishes.

    The signal comes 90 s into each attempt, later than a job's start-up takes on a loaded
    machine: submitit installs its handlers only once the job's pickle is loaded (torch,
    Lightning and normlab imported), and a USR2 before that kills the job (with a 1-minute
    limit and USR2 at 30 s, both jobs died so on a machine busy with two training runs). Steps
    paced to 80 ms make a job last at least 123 s, longer than the 80 s a first window leaves
    after the quickest start, so every job is requeued at least once."""
    sweep = Sweep(
        tmp_path / "sweep",
        local_cluster,
        "hydra.launcher.timeout_min=3",
        "hydra.launcher.signal_delay_s=90",
        "++callbacks.extra.pace.seconds=0.08",
    )
    assert "2 jobs: 2 completed, 0 failed" in sweep.finish(timeout_s=900)
    _check_same("time limit (3 min, USR2 90 s before)", sweep, baseline)


@pytest.mark.parametrize(
    ("grace_s", "preempt_signal", "case"),
    [
        # SIGTERM at preemption, SLURM requeues the job if it still runs 15 s later: normlab
        # checkpoints and keeps running, so SLURM requeues it (Lightning alone exits 0: COMPLETED)
        pytest.param(15, False, "preemption, grace 15 s, SIGTERM", id="grace-15s-sigterm"),
        # SLURM sends USR2 and requeues the job itself; submitit's `scontrol requeue` then
        # fails, which must not be recorded as the job's failure
        pytest.param(0, True, "preemption, USR2, no grace", id="own-usr2-no-grace"),
    ],
)
def test_preemption(
    tmp_path: Path,
    baseline: dict[int, dict[str, Any]],
    grace_s: int,
    preempt_signal: bool,
    case: str,
) -> None:
    """A job of the `urgent` partition preempts both jobs mid-training: each ends completed
    with the numbers of the uninterrupted sweep."""
    env = _cluster(grace_s=grace_s, preempt_signal=preempt_signal)
    try:
        sweep = Sweep(tmp_path / "sweep", env)
        sweep.wait_mid_training()
        slurm(env, "sbatch", "--partition=urgent", "--cpus-per-task=2", "--wrap=sleep 10")
        assert "2 jobs: 2 completed, 0 failed" in sweep.finish()
        _check_same(case, sweep, baseline)
    finally:
        _cluster()


def test_a_killed_job_is_recorded_failed_and_the_sweep_goes_on(
    tmp_path: Path, baseline: dict[int, dict[str, Any]], local_cluster: dict[str, str]
) -> None:
    sweep = Sweep(tmp_path / "sweep", local_cluster)
    sweep.wait_mid_training()
    slurm(local_cluster, "scancel", sweep.job_id(1))
    output = sweep.finish(returncode=1)  # a failed job fails the sweep command
    assert "2 jobs: 1 completed, 1 failed" in output, output[-2000:]
    results = sweep.results()
    assert results[0]["status"] == "completed"
    for key in COMPARED:
        assert results[0][key] == pytest.approx(baseline[0][key], abs=1e-6), key
    assert results[1]["status"] == "failed" and "CANCELLED" in results[1]["error"]
    print(f"\nscancel: job 1 recorded {results[1]['status']}: {results[1]['error']}")


DDP_ARGS = [
    *PACE,
    "trainer=ddp_cpu",  # two tasks of one core: each task is one DDP rank (gloo)
    "norm=bn",
    "trainer.max_epochs=12",
    "batch_size=16",
    "data.train_samples=1024",
    "data.val_samples=256",
    "threads=1",
    "callbacks.progress=none",
    "print_config=false",
    "trainer.num_sanity_val_steps=0",
]


def _ddp_sweep(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={folder}",
        *DDP_ARGS,
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_ddp_job_checkpointed_mid_epoch_resumes_every_rank_exactly(
    tmp_path: Path, local_cluster: dict[str, str]
) -> None:
    """Two ranks (two SLURM tasks): the checkpoint holds every rank's running statistics and
    random state, so the requeued job ends exactly where an uninterrupted one does."""
    plain = _ddp_sweep(tmp_path / "plain", local_cluster)
    output, _ = plain.communicate(timeout=600)
    assert "1 jobs: 1 completed" in output, output[-2000:]
    want = json.loads((tmp_path / "plain" / "0" / "results.json").read_text())

    sweep = _ddp_sweep(tmp_path / "signalled", local_cluster)
    job_dir = tmp_path / "signalled" / "0"
    deadline = time.time() + 240
    while not (job_dir / "checkpoints" / "last.ckpt").is_file():
        assert time.time() < deadline and sweep.poll() is None, "no first checkpoint"
        time.sleep(0.5)
    time.sleep(1.5)  # into the next epoch
    job_id = json.loads((job_dir / "results.json").read_text())["slurm_job_id"]
    slurm(local_cluster, "scancel", "--signal=USR2", job_id)
    output, _ = sweep.communicate(timeout=600)
    assert "1 jobs: 1 completed" in output, output[-2000:]
    got = json.loads((job_dir / "results.json").read_text())
    logs = [p.read_text() for p in (tmp_path / "signalled" / ".submitit").rglob("*_log.out")]
    print(
        f"\nDDP, 2 ranks, USR2: {[line for log in logs for line in log.splitlines() if 'SIGUSR2' in line]}"
    )
    row = {key: (got.get(key), want.get(key)) for key in (*COMPARED, "train_loss", "attempts")}
    print(f"DDP, 2 ranks, USR2: (interrupted, uninterrupted) {row}")
    assert got["attempts"] == 2 and got["world_size"] == 2
    for key in (*COMPARED, "train_loss"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
