"""The decoded-image cache of data=folder survives parallel sweep jobs decoding at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg

from normlab.data import folder as folder_module


def tiny_tree(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            write_jpeg(
                torch.full((3, 8, 8), 40 * i, dtype=torch.uint8), str(root / label / f"{i}.jpg")
            )
    return root


def test_two_jobs_decoding_the_same_folder_at_once_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tiny_tree(tmp_path / "train")
    both_saved = threading.Barrier(2, timeout=30)
    real_save = torch.save

    def save_then_wait(obj: object, path: object) -> None:
        real_save(obj, path)
        both_saved.wait()  # both jobs hold a written temporary file before either renames it

    monkeypatch.setattr(folder_module.torch, "save", save_then_wait)
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(folder_module.decode_folder_cached, tree, tmp_path / "cache")
            for _ in range(2)
        ]
        results = [job.result() for job in jobs]
    assert all(torch.equal(r[0], results[0][0]) for r in results)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        next((tmp_path / "cache").glob("folder-*.pt")).name
    ]
