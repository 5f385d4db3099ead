"""Real `python train.py` runs as subprocesses: a single run, a 2x2 sweep, CIFAR-10 from a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normlab.platform.runtime import owned_cores
from normlab.results import RESULT_FIELDS, SOMETIMES_FIELDS
from tests.helpers import compose_config, run_train


def load_results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_default_job_trains_and_writes_results(tmp_path: Path) -> None:
    proc = run_train(["trainer.max_epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results(tmp_path / "run")
    # every field of RunResult but those that do not apply (no error, diagnostics, domain shift)
    assert sorted(results) == sorted(set(RESULT_FIELDS) - set(SOMETIMES_FIELDS))
    assert results["status"] == "completed"
    assert (
        results["norm"] == "bn" and results["data"] == "digits" and results["model"] == "resnet20"
    )
    assert results["epochs"] == 3 and results["steps"] == 3 * (1437 // 32)
    assert results["val_acc"] > 0.3, "better than chance (0.1) on real digits"
    assert 0 <= results["val_acc"] <= results["best_val_acc"] <= 1
    assert results["train_images_per_s"] > 0
    assert results["threads"] == owned_cores()  # threads: null, one job: all its cores
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").exists() and (run / "config_resolved.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists() and (
        run / "checkpoints" / "best.ckpt"
    ).exists()
    assert (run / "csv" / "metrics.csv").exists()


def test_two_by_two_multirun_writes_four_results(tmp_path: Path) -> None:
    proc = run_train(
        [
            "-m",
            "norm=bn,gn",
            "batch_size=16,32",
            "trainer.max_epochs=1",
            "data.train_samples=256",
            "callbacks.checkpoint.enabled=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "results.json").exists())
    assert len(folders) == 4
    combos = {(r["norm"], r["batch_size"]) for r in map(load_results, folders)}
    assert combos == {("bn", 16), ("bn", 32), ("gn", 16), ("gn", 32)}
    assert all(load_results(f)["status"] == "completed" for f in folders)


@pytest.mark.slow  # two jobs under submitit_local (30 s); configure_threads is unit-tested
def test_submitit_local_jobs_started_at_once_share_the_cores(tmp_path: Path) -> None:
    """A submitit_local sweep completes, its jobs sharing the cores, with its summary line."""
    proc = run_train(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "norm=bn,gn",
            "trainer.max_epochs=1",
            "data.train_samples=64",
            "data.val_samples=64",
            "logger=none",
            "callbacks.checkpoint.enabled=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [load_results(p.parent) for p in (tmp_path / "sweep").glob("*/results.json")]
    assert len(results) == 2 and all(r["status"] == "completed" for r in results)
    assert {r["threads"] for r in results} == {max(1, owned_cores() // 2)}
    assert "2 jobs: 2 completed, 0 failed, 0 diverged" in proc.stdout


@pytest.mark.slow  # every method's CIFAR-10 training (tests/test_every_method.py) covers the path
def test_cifar10_from_the_shared_folder(tmp_path: Path, cifar10_root: Path) -> None:
    proc = run_train(
        [
            "data=folder",
            f"data.root={cifar10_root}",
            "model=resnet20",
            "norm=bn",
            "batch_size=32",
            "trainer.max_epochs=1",
            "data.train_samples=4000",
            "data.val_samples=1000",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results(tmp_path / "run")
    assert results["status"] == "completed" and results["data"] == "folder"
    assert results["steps"] == 4000 // 32
    assert results["val_acc"] > 0.15, "better than chance (0.1) after one short epoch"


def test_unknown_norm_exits_with_one_line(tmp_path: Path) -> None:
    proc = run_train(["norm=nope"], tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert lines == [
        "normlab: error: unknown norm 'nope'; valid choices: "
        + lines[0].split("valid choices: ")[1]
    ]
    assert "bn" in lines[0] and "gn" in lines[0] and "Traceback" not in proc.stderr


def test_bad_norm_parameter_is_a_user_error_recorded_failed(tmp_path: Path) -> None:
    """A user error (one line on the command line, tests/test_bad_input.py), recorded."""
    from normlab.results import USER_ERRORS
    from normlab.train import run

    with pytest.raises(USER_ERRORS, match="gn: groups=5 does not divide num_channels=16"):
        run(compose_config(["norm=gn", "norm.groups=5", "logger=none"]), tmp_path / "run")
    results = load_results(tmp_path / "run")
    assert results["status"] == "failed" and results["bad_input"] is True


def test_fast_dev_run_is_recorded_as_a_debug_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A smoke test is not a result: status 'debug', which reports never average in."""
    from normlab.train import run

    run(compose_config(["+trainer.fast_dev_run=true", "logger=none"]), tmp_path / "run")
    assert load_results(tmp_path / "run")["status"] == "debug"
    assert "normlab: learning rate " in capsys.readouterr().out  # the effective rate is printed


def test_submitit_local_runs_jobs_at_once_in_waves(tmp_path: Path) -> None:
    """hydra.launcher.jobs_at_once=1: each job starts after the one before it has finished,
    with the cores to itself; the summary counts every wave's jobs."""
    proc = run_train(
        [
            "-m",
            "hydra/launcher=cores",
            "hydra.launcher.jobs_at_once=1",
            "seed=0,1",
            "trainer.max_epochs=1",
            "data.train_samples=32",
            "data.val_samples=32",
            "logger=none",
            "callbacks.checkpoint.enabled=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (tmp_path / "sweep" / job for job in ("0", "1"))
    started = (second / ".hydra" / "config.yaml").stat().st_mtime  # Hydra writes it at the start
    assert (first / "results.json").stat().st_mtime <= started
    assert {load_results(f)["threads"] for f in (first, second)} == {1}
    assert "2 jobs: 2 completed, 0 failed, 0 diverged" in proc.stdout


@pytest.mark.parametrize(
    ("jobs", "requested", "cpus", "expected"),
    [(5, None, None, 5), (5, None, 1, 2), (1, None, 1, 1), (5, 3, None, 3), (2, 3, 1, 2)],
)
def test_jobs_at_once_follow_the_cores_per_job(
    monkeypatch: pytest.MonkeyPatch, jobs: int, requested: int | None, cpus: int | None,
    expected: int
) -> None:  # fmt: skip
    import hydra_plugins.normlab_launcher as launcher

    monkeypatch.setattr(launcher, "owned_cores", lambda: 2)
    assert launcher.jobs_at_once(jobs, requested, cpus) == expected
    with pytest.raises(ValueError, match="jobs_at_once must be >= 1"):
        launcher.jobs_at_once(jobs, 0, cpus)
