"""Batch statistics at inference see randomly composed batches: the evaluation loader serves
an image folder, which lists its samples class by class, in one fixed random order, the same
for every run seed."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import write_png

from normlab.data import build_datamodule
from tests.helpers import compose_config

CLASSES = 4
PER_CLASS = 16


def class_sorted_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                image = torch.full((3, 8, 8), 30 * label + i, dtype=torch.uint8)
                write_png(image, str(folder / f"{i}.png"))
    return root


def eval_batches(root: Path, seed: int, batch_size: int = 8) -> list[torch.Tensor]:
    cfg = compose_config(["data=folder", f"data.root={root}", f"data.cache_dir={root}/cache"])
    datamodule = build_datamodule(cfg.data, 8, seed=seed, virtual_devices=1)
    return [labels for _, labels in datamodule.eval_dataloader(batch_size)]


def test_evaluation_batches_mix_the_classes_of_a_class_sorted_folder(tmp_path: Path) -> None:
    root = class_sorted_folder(tmp_path / "tree")
    batches = eval_batches(root, seed=0)
    labels = torch.cat(batches)
    assert sorted(labels.tolist()) == sorted(list(range(CLASSES)) * PER_CLASS)  # each once
    single_class = sum(int(batch.unique().numel() == 1) for batch in batches)
    assert single_class <= 1, f"{single_class} of {len(batches)} batches hold one class"


def test_every_run_seed_sees_the_same_evaluation_batches(tmp_path: Path) -> None:
    root = class_sorted_folder(tmp_path / "tree")
    first, other = eval_batches(root, seed=0), eval_batches(root, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
