"""The real config, every option of every group, shrunk and built in-process (the fast tier);
every paper preset at both scales trains two steps on a tiny generated ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg

from normlab.cli import group_choices
from normlab.job.build import Run, build_run
from normlab.norms import get_norm_spec
from tests.helpers import CONF_DIR, Shrink, compose_config

# On top of the tiny run (the `shrink` fixture): two steps of batch 2, one validation batch.
EXTRAS = (
    "batch_size=2",
    "++trainer.max_steps=2",
    "++trainer.limit_val_batches=1",  # ++: debug=limit sets it too
    "callbacks.checkpoint.enabled=false",
    "precise_bn.target_samples=8",
    "diagnostics.probe_size=8",
)
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


# What the built run of an option shows of it, for the groups where one object holds it.
LOGGERS = {"none": set(), "csv": {"CSVLogger"}, "tensorboard": {"CSVLogger", "TensorBoardLogger"},
           "wandb": {"CSVLogger", "WandbLogger"}}  # fmt: skip
CONVS = {"resnet20": 19, "resnet56": 55, "resnet110": 109, "resnet18": 20, "resnet50": 53}
DEBUG = {
    "fdr": lambda t: bool(t.fast_dev_run),
    "limit": lambda t: t.limit_train_batches == 3,  # its epochs: the tiny run's
    "overfit": lambda t: t.overfit_batches == 3,
    "profiler": lambda t: type(t.profiler).__name__ == "SimpleProfiler",
    "none": lambda t: not t.fast_dev_run and t.overfit_batches == 0,
}


def _check_the_build_reflects(option: str, run: Run) -> None:
    """The option is in the built objects: the norm's own layer class in the model, the
    model's depth (its convolutions), the loggers, the trainer's devices, the debug settings;
    an option of another group (timm's model too) builds at all."""
    group, choice = option.split("=", 1)
    if group == "norm":
        layer = get_norm_spec(choice).layer
        assert any(isinstance(m, layer) for m in run.model.modules()), (option, layer)
    elif group == "model" and choice in CONVS:
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in run.model.modules())
        assert convs == CONVS[choice], (option, convs)
    elif group == "logger":
        assert {type(logger).__name__ for logger in run.loggers} == LOGGERS[choice]
    elif group == "trainer":
        assert run.trainer.num_devices == {"cpu": 1, "ddp_cpu": 2}[choice]
    elif group == "debug":
        assert DEBUG[choice](run.trainer), option


@pytest.mark.fast  # in-process: make test-fast (the presets' training below is not)
@pytest.mark.parametrize(
    "option", [f"{g}={o}" for g in GROUPS for o in group_choices(CONF_DIR, g) or []]
)
def test_every_option_of_every_group_builds(
    option: str, tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shrink: Shrink
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
        *shrink(*EXTRAS, "batch_size=16", *_data_overrides(option, tiny_tree), *overrides_extra),
    ]
    if option.startswith(("data=", "scale=", "experiment=")) or option == "model=timm":
        overrides.append("logger=none")
    threads = torch.get_num_threads()
    cfg = compose_config([*overrides])
    if cfg.precise_bn.compare_samples:  # a preset's sample counts, shrunk to the tiny tree
        cfg.precise_bn.compare_samples = [8]
    run = build_run(cfg, tmp_path)
    try:
        assert run.module.model is run.model
        _check_the_build_reflects(option, run)
    finally:
        run.close(failed=False)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
@pytest.mark.parametrize("preset", group_choices(CONF_DIR, "experiment") or [])
def test_every_preset_trains_two_steps(
    preset: str, scale: str, tiny_tree: Path, tmp_path: Path, shrink: Shrink
) -> None:
    from normlab.train import run

    cfg = compose_config(
        [f"experiment={preset}", f"scale={scale}",
         *shrink(*EXTRAS, *_data_overrides("scale=" + scale, tiny_tree), "logger=none")]
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
