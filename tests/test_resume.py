"""A run stopped after epoch 1 and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import run_in_process, shrunk

SMALL = shrunk("trainer.max_epochs=2", "data.train_samples=128", "model=resnet20", "batch_size=32",
               "logger=csv")  # fmt: skip


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    return checkpoint["state_dict"]


def _run(overrides: list[str], run_dir: Path) -> dict:
    return run_in_process([*SMALL, *overrides], run_dir)


def test_stopped_and_resumed_run_matches_uninterrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process (the command line's auto-resume is this same run() on the same folder)."""
    full = _run([], tmp_path / "full")
    first = _run(["debug.stop_after_epochs=1"], tmp_path / "resumed")
    assert first["status"] == "interrupted"
    capsys.readouterr()
    second = _run([], tmp_path / "resumed")  # same run folder: auto-resume from last.ckpt
    assert "resuming from" in capsys.readouterr().out

    a, b = full, second
    assert b["status"] == "completed" and b["resumed_from"].endswith("last.ckpt")
    assert (a["epochs"], a["steps"]) == (b["epochs"], b["steps"])
    assert len(b["history"]) == 2  # the epoch before the interruption is kept
    for key in ("val_loss", "val_acc"):
        assert abs(a[key] - b[key]) < 1e-6, key
    csv = tmp_path / "resumed" / "csv"
    assert "\n0," in (csv / "metrics.csv").read_text(), "epoch 0 metrics kept after the resume"
    assert "\n1," in (csv / "resumed_1" / "metrics.csv").read_text()
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)


def test_ckpt_path_last_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ckpt_path=last but"):
        _run(["ckpt_path=last"], tmp_path / "run")
