"""notebooks/sweep_report.ipynb runs top to bottom on a synthetic preset sweep."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO_ROOT
from tests.test_paper_report import make_gn_sweep


def test_sweep_report_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_gn_sweep(tmp_path / "sweep")
    monkeypatch.setenv("NORMLAB_SWEEP", str(tmp_path / "sweep"))
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "sweep_report.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = "".join(
        str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
        for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )  # fmt: skip
    assert "42.00 ± 2.83 (n=2) [diverged 1]" in outputs and "GN is better than BN" in outputs
    assert (tmp_path / "sweep" / "nb_accuracy_vs_batch.png").stat().st_size > 5000
