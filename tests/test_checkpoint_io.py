"""Checkpoints that survive the disk (issue 20): an unreadable last.ckpt falls back to the
newest readable checkpoint or a fresh start, with one line recorded in results.json; a save
that fails (a full disk) leaves the good checkpoint in place and fails the run with its
reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from normlab.job.checkpoint_io import save_atomically, unreadable_reason
from tests.helpers import run_in_process, shrunk

TWO_EPOCHS = shrunk("data.val_samples=32", "batch_size=16", "threads=1", "trainer.max_epochs=2")


def stopped_after_one_epoch(folder: Path) -> dict:
    """A 2-epoch run stopped after its first epoch, as a preempted job is."""
    return run_in_process([*TWO_EPOCHS, "debug.stop_after_epochs=1"], folder)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_an_unreadable_last_checkpoint_falls_back_to_the_best_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    assert stopped_after_one_epoch(folder)["status"] == "interrupted"
    truncate(folder / "checkpoints" / "last.ckpt")
    results = run_in_process(TWO_EPOCHS, folder)
    assert results["status"] == "completed" and results["epochs"] == 2
    assert results["resumed_from"] == str(folder / "checkpoints" / "best.ckpt")
    assert "last.ckpt cannot be read" in results["resume_fallback"]
    assert "not a complete torch checkpoint (truncated" in results["resume_fallback"]
    assert "resuming from best.ckpt instead" in capsys.readouterr().err


def test_no_readable_checkpoint_starts_afresh_with_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    stopped_after_one_epoch(folder)
    for path in (folder / "checkpoints").glob("*.ckpt"):
        truncate(path)
    results = run_in_process(TWO_EPOCHS, folder)
    assert results["status"] == "completed" and results["resumed_from"] is None
    assert results["resume_fallback"].endswith("starting afresh")


def test_an_unreadable_checkpoint_asked_for_by_name_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ValueError, match=r"ckpt_path=.*bad.ckpt cannot be read"):
        run_in_process([*TWO_EPOCHS, f"ckpt_path={bad}"], tmp_path / "run")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB file system (tmpfs, as root; skipped elsewhere): room for one checkpoint."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_fails_the_run_with_its_reason_and_no_partial_checkpoint(
    small_disk: Path,
) -> None:
    folder = small_disk / "run"
    with pytest.raises(OSError, match="No space left on device"):
        run_in_process(TWO_EPOCHS, folder)
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "failed" and "No space left on device" in results["error"]
    assert "No space left on device" in (folder / "error.log").read_text()
    checkpoints = list((folder / "checkpoints").iterdir())
    assert not [p for p in checkpoints if p.suffix == ".tmp"], "the partial file is removed"
    for path in checkpoints:
        assert unreadable_reason(path) is None, f"{path.name} is a partial checkpoint"


def test_save_atomically_leaves_the_old_content_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    save_atomically({"a": torch.ones(2)}, path)
    with pytest.raises((TypeError, AttributeError)):
        save_atomically({"a": lambda: None}, path)  # cannot be pickled: fails midway
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]
