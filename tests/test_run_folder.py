"""Run folders that never lie (normlab.run_folder): a folder resumes or reports only the run its
fingerprint records, refuses any other before touching a file, and admits one process at a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.console import error_line
from normlab.results import USER_ERRORS
from normlab.run_folder import (
    FINGERPRINT_FILE,
    LOCK_FILE,
    PREVIOUS_RUN_OUTPUTS,
    FolderBusy,
    FolderHoldsAnotherRun,
    RunFolder,
    fingerprint,
)
from tests.helpers import REPO_ROOT, compose_config, run_in_process, run_train, shrunk

SMALL = shrunk("data.val_samples=32", "batch_size=16", "threads=1")
Snapshot = dict[str, tuple[bytes, int] | None]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed seed-0 BN run; each test works on a copy (copytree keeps the mtimes)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    assert run_in_process(SMALL, folder)["status"] == "completed"
    return folder


def _copy(finished: Path, to: Path) -> Path:
    shutil.copytree(finished, to)
    return to


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> Snapshot:
    """Every file's bytes and mtime (folders: None), by relative path, except under `skip`."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if not str(p.relative_to(folder)).startswith(skip)
    }


def _refused(overrides: list[str], folder: Path) -> str:
    with pytest.raises(FolderHoldsAnotherRun) as error:
        run_in_process([*SMALL, *overrides], folder)
    return error_line(str(error.value))


def test_another_seed_and_lr_is_refused_naming_them_and_the_folder_is_untouched(
    finished: Path, tmp_path: Path
) -> None:
    """It resumed the seed-0 checkpoint and recorded seed 1, lr 0.05 with seed 0's accuracy."""
    folder = _copy(finished, tmp_path / "run")
    before = snapshot(folder)
    line = _refused(["seed=1", "optim.lr=0.05"], folder)
    assert "\n" not in line and line.startswith(f"normlab: error: {folder} holds another run")
    assert "seed: 0 -> 1" in line and "optim.lr: 0.1 -> 0.05" in line
    assert "resume=false" in line and "hydra.run.dir=" in line
    assert snapshot(folder) == before


def test_another_norm_is_refused_and_the_folder_is_untouched(
    finished: Path, tmp_path: Path
) -> None:
    """It crashed on the state_dict and overwrote the BN run's results.json and config."""
    folder = _copy(finished, tmp_path / "run")
    before = snapshot(folder)
    line = _refused(["norm=gn"], folder)
    assert "norm.name: bn -> gn" in line and "norm.groups: (unset) -> 8" in line
    assert snapshot(folder) == before


def test_the_same_run_again_is_reported_completed_and_left_as_it_is(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It rewrote results.json with train_loss and train_images_per_s null. Keys that only say
    how a run executes (threads, progress bar) do not make another run."""
    folder = _copy(finished, tmp_path / "run")
    before = snapshot(folder)
    capsys.readouterr()
    again = run_in_process([*SMALL, "threads=2", "callbacks.progress=tqdm"], folder)
    assert again == json.loads((folder / "results.json").read_text())
    assert again["status"] == "completed" and again["train_loss"] is not None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("normlab: already completed: "), out
    assert snapshot(folder) == before


def test_every_file_a_run_writes_is_named_by_its_run_folder(finished: Path) -> None:
    """Every file name of a run folder lives in RunFolder (issue 18): what a run wrote is what
    its paths and PREVIOUS_RUN_OUTPUTS name, besides the lock (Hydra's .hydra/ and train.log
    come with the command line, not with an in-process run)."""
    folder = RunFolder(finished)
    written = {p.name for p in finished.iterdir()}
    assert written <= {*PREVIOUS_RUN_OUTPUTS, LOCK_FILE}, written - set(PREVIOUS_RUN_OUTPUTS)
    named = [folder.results, folder.config, folder.fingerprint_file, folder.metrics_csv,
             folder.last_checkpoint, folder.best_checkpoint]  # fmt: skip
    assert [p for p in named if not p.is_file()] == []
    assert not folder.fit_summary.exists() and not folder.error_log.exists()
    assert set(folder.checkpoints.iterdir()) == {folder.last_checkpoint, folder.best_checkpoint}


def test_resume_false_replaces_the_run_and_starts_afresh(finished: Path, tmp_path: Path) -> None:
    folder = _copy(finished, tmp_path / "run")
    results = run_in_process([*SMALL, "seed=1", "resume=false"], folder)
    assert results["status"] == "completed" and results["seed"] == 1
    assert results["resumed_from"] is None and results["epochs"] == 1
    recorded = json.loads((folder / FINGERPRINT_FILE).read_text())
    assert recorded["settings"]["seed"] == 1
    assert recorded["sha256"] == fingerprint(compose_config([*SMALL, "seed=1"])).digest
    assert not (folder / "csv" / "resumed_1").exists(), "the earlier run's metrics are gone"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_folder_from_before_fingerprints_is_judged_by_its_config(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(finished, tmp_path / "run")
    (folder / FINGERPRINT_FILE).unlink()
    before = snapshot(folder)
    line = _refused(["seed=1"], folder)
    assert "seed: 0 -> 1" in line and "config_resolved.yaml" in line
    capsys.readouterr()
    run_in_process(SMALL, folder)
    assert capsys.readouterr().out.startswith("normlab: already completed: ")
    assert snapshot(folder) == before


def test_the_fingerprint_leaves_out_only_how_a_run_executes() -> None:
    base = fingerprint(compose_config(SMALL))
    same = [
        "threads=2",
        "resume=false",
        "print_config=true",
        "logger=none",
        "callbacks.progress=rich",
        "debug.stop_after_epochs=1",
        "trainer.log_every_n_steps=1",
    ]
    assert fingerprint(compose_config([*SMALL, *same])).digest == base.digest
    for other in ["seed=1", "trainer.max_epochs=2", "norm=gn", "data.train_samples=32"]:
        assert fingerprint(compose_config([*SMALL, other])).digest != base.digest, other


HOLD = (
    "import sys; from pathlib import Path; from normlab.run_folder import RunFolder; "
    "RunFolder(Path(sys.argv[1])).lock(); print('held', flush=True); sys.stdin.read()"
)


def _holder(folder: Path) -> subprocess.Popen[str]:
    """Another process holding `folder`'s lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(timeout=30)


def test_a_second_process_is_refused_at_once_and_writes_nothing(
    finished: Path, tmp_path: Path
) -> None:
    """Two runs at once into one folder: one completed, the other died on the CSV logger,
    leaving error.log beside a completed results.json and recorded bad_input."""
    fresh, done = tmp_path / "fresh", _copy(finished, tmp_path / "done")
    for folder in (fresh, done):
        holder = _holder(folder)
        try:
            before = snapshot(folder)
            with pytest.raises(FolderBusy) as error:
                run_in_process(SMALL, folder)
            assert snapshot(folder) == before
        finally:
            _release(holder)
        line = error_line(str(error.value))
        assert "\n" not in line and f"another process is running in {folder}" in line
        assert not isinstance(error.value, USER_ERRORS), "never recorded as bad input"
    assert sorted(p.name for p in fresh.iterdir()) == [LOCK_FILE]


def test_a_killed_holder_leaves_no_lock_behind(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    holder = _holder(folder.path)
    with pytest.raises(FolderBusy):
        folder.lock()
    holder.kill()  # SIGKILL: no cleanup code runs in the holder
    holder.wait(timeout=30)
    assert folder.lock() is True, "the kernel released the dead holder's lock"
    folder.unlock()


def test_the_command_line_refuses_or_reports_before_hydra_writes(
    finished: Path, tmp_path: Path
) -> None:
    """train.py claims a named hydra.run.dir before Hydra writes .hydra/ and train.log."""
    folder = _copy(finished, tmp_path / "run")  # run_train's hydra.run.dir
    before = snapshot(folder)
    other = run_train([*SMALL, "seed=1"], tmp_path, timeout=300)
    assert other.returncode == 1
    assert [line for line in other.stderr.splitlines() if line.strip()] == [
        other.stderr.strip()
    ] and other.stderr.startswith(f"normlab: error: {folder} holds another run (seed: 0 -> 1")
    same = run_train(SMALL, tmp_path, timeout=300)
    assert same.returncode == 0, same.stderr[-2000:]
    assert same.stdout.startswith("normlab: already completed: ")
    holder = _holder(folder)
    try:
        busy = run_train(SMALL, tmp_path, timeout=300)
    finally:
        _release(holder)
    assert busy.returncode == 1
    assert busy.stderr.strip().startswith(f"normlab: error: another process is running in {folder}")
    assert busy.stderr.strip().count("\n") == 0
    assert snapshot(folder) == before


def test_a_changed_grid_is_refused_before_any_job_folder_is_written(
    finished: Path, tmp_path: Path
) -> None:
    """Job 0 (seed=1) would land in a folder that holds a finished seed-0 run: the whole command
    is refused, one line per such job, before Hydra writes any job's .hydra/ (it used to rewrite
    them to the refused settings beside the old results) and before any job runs."""
    sweep = tmp_path / "sweep"
    _copy(finished, sweep / "0")
    before = snapshot(sweep)
    result = run_train(["-m", *SMALL, "seed=1,0"], tmp_path, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("normlab: error:")]
    assert len(errors) == 2 and errors[0].startswith("normlab: error: job #0 (")
    assert " seed=1): " in errors[0]
    assert f"{sweep / '0'} holds another run (seed: 0 -> 1" in errors[0]
    assert "1 job(s) of this sweep would replace other runs" in errors[1]
    assert "nothing was run" in errors[1]
    assert snapshot(sweep) == before, "nothing in the sweep folder was written"


def test_a_busy_job_is_refused_and_counted_and_the_command_fails(
    finished: Path, tmp_path: Path
) -> None:
    """Job 0 is this very run, finished; job 1's folder is held by another process: job 0 is
    skipped, job 1 refused in one line with nothing written, and the summary counts what this
    command did (it used to count the folder's results.json files and exit 0)."""
    sweep = tmp_path / "sweep"
    job1 = sweep / "1"
    _copy(finished, sweep / "0")
    holder = _holder(job1)
    try:
        result = run_train(["-m", *SMALL, "seed=0,1"], tmp_path, timeout=300)
    finally:
        _release(holder)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"normlab: error: another process is running in {job1}" in result.stderr
    assert (
        "sweep finished: 2 jobs: 1 completed, 0 failed, 0 diverged; 0 launched, 1 skipped as "
        "already finished, 1 refused, 0 unrecorded" in result.stdout
    )
    assert not (job1 / "results.json").exists() and not (job1 / "error.log").exists()
