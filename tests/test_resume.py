"""A run stopped after epoch 1 and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.helpers import run_train

SMALL = [
    "trainer.max_epochs=2",
    "data.train_samples=128",
    "data.val_samples=64",
    "trainer.num_sanity_val_steps=0",
    "model=resnet20",
    "batch_size=32",
    "logger=csv",
]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    return checkpoint["state_dict"]


def test_stopped_and_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    full = run_train(SMALL, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]

    first = run_train([*SMALL, "debug.stop_after_epochs=1"], tmp_path / "resumed")
    assert first.returncode == 0, first.stderr[-2000:]
    assert _results(tmp_path / "resumed" / "run")["status"] == "interrupted"
    second = run_train(SMALL, tmp_path / "resumed")  # same run folder: auto-resume from last.ckpt
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stdout

    a, b = _results(tmp_path / "full" / "run"), _results(tmp_path / "resumed" / "run")
    assert b["status"] == "completed" and b["resumed_from"].endswith("last.ckpt")
    assert (a["epochs"], a["steps"]) == (b["epochs"], b["steps"])
    assert len(b["history"]) == 2  # the epoch before the interruption is kept
    for key in ("val_loss", "val_acc"):
        assert abs(a[key] - b[key]) < 1e-6, key
    csv = tmp_path / "resumed" / "run" / "csv"
    assert "\n0," in (csv / "metrics.csv").read_text(), "epoch 0 metrics kept after the resume"
    assert "\n1," in (csv / "resumed_1" / "metrics.csv").read_text()
    wa, wb = _weights(tmp_path / "full" / "run"), _weights(tmp_path / "resumed" / "run")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)


def test_ckpt_path_last_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = run_train([*SMALL, "ckpt_path=last"], tmp_path)
    assert result.returncode != 0
    assert "normlab: error: ckpt_path=last but" in result.stderr
