"""Every run records where its numbers come from, and docs/results.md sections are found from
their files, not from a list in the script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.platform.provenance import provenance_summary
from tests.helpers import Shrink, run_in_process

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("overrides", "precision", "memory_format"),
    [
        ([], "32-true", "contiguous"),
        (["trainer.precision=bf16-mixed", "model.channels_last=true"], "bf16-mixed",
         "channels_last"),
    ],
)  # fmt: skip
def test_a_run_records_code_torch_device_precision_and_layout(
    tmp_path: Path, overrides: list[str], precision: str, memory_format: str, shrink: Shrink
) -> None:
    tiny = shrink("data.val_samples=32", "batch_size=16", "threads=1",
                  "callbacks.checkpoint.enabled=false", without=["trainer.num_sanity_val_steps"])  # fmt: skip
    results = run_in_process([*tiny, *overrides], tmp_path / "run")
    assert results["status"] == "completed"
    assert results["precision"] == precision and results["memory_format"] == memory_format
    origin = results["provenance"]
    assert origin["git_commit"] == git("rev-parse", "HEAD")
    changed = bool(git("status", "--porcelain", "--untracked-files=no"))
    assert origin["git_dirty"] is changed
    import torch

    import normlab

    assert origin["torch_version"] == torch.__version__
    assert origin["normlab_version"] == normlab.__version__
    assert origin["device_name"]


def test_the_summary_counts_each_combination_and_the_unrecorded_runs() -> None:
    origin = {
        "normlab_version": "0.1.0",
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
        "torch_version": "2.14.1",
        "device_name": "CPU X",
    }
    runs = [
        {"provenance": origin, "precision": "bf16-mixed", "memory_format": "contiguous"},
        {"provenance": origin, "precision": "bf16-mixed", "memory_format": "contiguous"},
        {"provenance": {**origin, "git_dirty": True}, "precision": "32-true",
         "memory_format": "channels_last"},
        {"status": "completed"},
    ]  # fmt: skip
    assert provenance_summary(runs) == (
        "normlab 0.1.0 at commit 0123456789 (clean), torch 2.14.1, CPU X, bf16-mixed, "
        "contiguous (2 runs); normlab 0.1.0 at commit 0123456789 (with uncommitted changes), "
        "torch 2.14.1, CPU X, 32-true, channels_last (1 run); not recorded (1 run made "
        "before normlab recorded provenance)"
    )


def load_results_script():  # noqa: ANN201 (a script module)
    spec = importlib.util.spec_from_file_location("results_script", REPO / "scripts/results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_script"] = module
    spec.loader.exec_module(module)
    return module


def test_published_sections_are_the_files_beside_the_records(tmp_path: Path) -> None:
    script = load_results_script()
    for name, order in (("zeta", 5), ("alpha", 20), ("beta", 20)):
        (tmp_path / f"{name}.yaml").write_text(
            f"order: {order}\ntitle: T {name}\nsweep: multirun/{name}\ncommand: c\n"
            "budget: b\nmachine: m\n"
        )
    assert [s.name for s in script.load_sections(tmp_path)] == ["zeta", "alpha", "beta"]
    (tmp_path / "bad.yaml").write_text("title: T\nsweeps: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml: .*keys: title, sweep"):
        script.load_sections(tmp_path)


def test_every_committed_record_file_has_its_section() -> None:
    script = load_results_script()
    names = {section.name for section in script.load_sections()}
    records = {path.stem for path in (REPO / "docs/results/runs").glob("*.jsonl")}
    assert records == names
