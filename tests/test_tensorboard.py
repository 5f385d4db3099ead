"""logger=tensorboard: TensorBoard event files beside the CSV metrics, written through
tensorboardX (the runtime dependency); without it, one clear line before any training."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from tests.helpers import run_in_process, shrunk

TINY = shrunk("data.val_samples=32", "batch_size=16", "threads=1", "trainer.max_epochs=2",
              "callbacks.checkpoint.enabled=false", without=["trainer.num_sanity_val_steps"])  # fmt: skip


def _run(overrides: list[str], output_dir: Path) -> dict:
    return run_in_process([*TINY, *overrides], output_dir)


def _scalars(events: Path) -> dict[str, list[float]]:
    """tag -> values of an events file (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[float]] = {}
    data = events.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


def test_tensorboard_logger_writes_val_acc_beside_the_csv(tmp_path: Path) -> None:
    results = _run(["logger=tensorboard"], tmp_path)
    assert results["status"] == "completed", results.get("error")
    events = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _scalars(events[0])
    assert len(scalars["val/acc"]) == 2  # one per epoch
    assert scalars["val/acc"][-1] == pytest.approx(results["val_acc"])
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # the CSV logger stays on


def test_tensorboard_without_its_package_is_one_line_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("tensorboardX", "tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError) as error:
        _run(["logger=tensorboard"], tmp_path)
    message = str(error.value)
    assert "pip install tensorboardX" in message and "\n" not in message
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "csv").exists()
