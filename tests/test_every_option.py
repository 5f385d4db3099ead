"""The real config, every option of every group, shrunk and built in-process (the fast tier);
every paper preset at both scales trains two steps on a tiny generated ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg

from normlab.build import build_run
from normlab.cli import group_choices
from tests.helpers import CONF_DIR, compose_config

SHRINK = [
    "batch_size=2",
    "trainer.max_epochs=1",
    "++trainer.max_steps=2",
    "++trainer.limit_val_batches=1",  # ++: debug=limit sets it too
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress=none",
    "callbacks.checkpoint.enabled=false",
    "print_config=false",
    "precise_bn.target_samples=8",
    "diagnostics.probe_size=8",
]
# Options that need what CI lacks: a GPU, or torchvision's own CIFAR files.
NEEDS = {"trainer=gpu": "a GPU", "trainer=ddp": "GPUs", "data=cifar10": "torchvision's CIFAR-10 files",
         "data=cifar100": "torchvision's CIFAR-100 files"}  # fmt: skip
GROUPS = [
    "norm",
    "model",
    "data",
    "optim",
    "sched",
    "trainer",
    "logger",
    "callbacks",
    "scale",
    "experiment",
    "debug",
]


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<class>/*.jpg and root/val/<class>/*.jpg: 2 classes of 16 and 4 images, 32 px."""
    root = tmp_path_factory.mktemp("tree")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 16), ("val", 4)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)
                write_jpeg(image, str(folder / f"{i}.jpg"))
    return root


def _data_overrides(option: str, tree: Path) -> list[str]:
    if option in (
        "data=folder",
        "data=imagenet",
        "scale=cifar",
        "scale=imagenet",
    ) or option.startswith("experiment="):
        # a preset's own subset sizes (precision_check) do not fit the tiny tree: all of it
        return [f"data.root={tree}", "data.num_workers=0", "++data.image_size=32", "batch_size=2",
                "data.train_samples=null", "data.val_samples=null"]  # fmt: skip
    return ["data.train_samples=32", "data.val_samples=16", "batch_size=16"]


@pytest.mark.parametrize(
    "option", [f"{g}={o}" for g in GROUPS for o in group_choices(CONF_DIR, g) or []]
)
def test_every_option_of_every_group_builds(
    option: str, tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if option == "optim=custom":
        overrides_extra = ["optim._target_=torch.optim.RMSprop", "optim.lr=0.01"]
    else:
        overrides_extra = []
    if option in NEEDS:
        pytest.skip(f"{option} needs {NEEDS[option]}")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    overrides = [
        option,
        *SHRINK,
        "batch_size=16",
        *_data_overrides(option, tiny_tree),
        *overrides_extra,
    ]
    if option.startswith(("data=", "scale=", "experiment=")) or option == "model=timm":
        overrides.append("logger=none")
    threads = torch.get_num_threads()
    cfg = compose_config([*overrides])
    if cfg.precise_bn.compare_samples:  # a preset's sample counts, shrunk to the tiny tree
        cfg.precise_bn.compare_samples = [8]
    run = build_run(cfg, tmp_path)
    try:
        assert run.trainer is not None and run.module.model is run.model
        assert sum(p.numel() for p in run.model.parameters()) > 0
    finally:
        run.close(failed=False)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
@pytest.mark.parametrize("preset", group_choices(CONF_DIR, "experiment") or [])
def test_every_preset_trains_two_steps(
    preset: str, scale: str, tiny_tree: Path, tmp_path: Path
) -> None:
    from normlab.train import run

    cfg = compose_config(
        [f"experiment={preset}", f"scale={scale}", *SHRINK, *_data_overrides("scale=" + scale, tiny_tree),
         "logger=none"]
    )  # fmt: skip
    if cfg.precise_bn.compare_samples:  # the preset's sample counts, shrunk to the tiny tree
        cfg.precise_bn.compare_samples = [8]
    threads = torch.get_num_threads()
    try:
        results = run(cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert results["status"] == "completed", results.get("error")
    assert results["steps"] == 2 and results["preset"] == preset
    if cfg.precise_bn.compare_samples:
        assert list(results["precise_bn_compare"]) == ["8"]
