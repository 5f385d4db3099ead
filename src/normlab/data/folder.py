"""ImageFolder trees (train/ and val/ or test/): the ImageNet layout.

`augment=cifar` decodes every image once into a cached uint8 tensor (all images must have
one size) and augments tensors, which is what makes CPU runs on CIFAR-sized folders fast;
`augment=imagenet` streams files through torchvision transforms (random-resized crops).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from normlab.data.base import ImageDataModule, InMemoryDataModule, LoaderOptions
from normlab.data.tensors import check_subset_size

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
AUGMENTS = ("cifar", "imagenet", "none")


def split_dirs(root: Path) -> tuple[Path, Path]:
    """The train folder and the evaluation folder (val/, else test/) under `root`."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={root} does not exist; it must hold train/ and val/ (or test/) class folders. "
            "For the shared CIFAR-10 copy run `make data`, then data.root=.cache/data/cifar10"
        )
    train = root / "train"
    evaluation = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train.is_dir() or evaluation is None:
        raise FileNotFoundError(
            f"data.root={root} must hold train/ and val/ (or test/) class folders"
        )
    return train, evaluation


class FolderTensorDataModule(InMemoryDataModule):
    """An image folder of small, equal-size images decoded once into a cached tensor."""

    name = "folder"

    def __init__(
        self, options: LoaderOptions, root: str, cache_dir: str, augment: bool = True
    ) -> None:
        super().__init__(options, augment)
        self.root = Path(root)
        self.cache_dir = Path(cache_dir)

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        train_dir, eval_dir = split_dirs(self.root)
        train_x, train_y, classes = decode_folder_cached(train_dir, self.cache_dir)
        val_x, val_y, val_classes = decode_folder_cached(eval_dir, self.cache_dir)
        if classes != val_classes:
            raise ValueError(
                f"train/ and {eval_dir.name}/ under {self.root} have different classes"
            )
        self.num_classes = len(classes)
        return train_x, train_y, val_x, val_y


def decode_folder_cached(
    folder: Path, cache_dir: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of an ImageFolder as one uint8 tensor, cached by path, size and mtime."""
    index = datasets.ImageFolder(str(folder))
    stamp = f"{folder.resolve()}|{len(index.samples)}|{folder.stat().st_mtime_ns}"
    key = hashlib.sha1(stamp.encode()).hexdigest()[:16]
    cache = cache_dir / f"folder-{key}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        return saved["images"], saved["labels"], list(saved["classes"])
    images = [decode_image(read_file(path), mode=ImageReadMode.RGB) for path, _ in index.samples]
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise ValueError(
            f"{folder} holds images of {len(sizes)} different sizes; data.augment=cifar needs one "
            "size (use data.augment=imagenet for ImageNet-style folders)"
        )
    stacked = torch.stack(images)
    labels = torch.tensor([label for _, label in index.samples])
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: parallel sweep jobs decode the same folder at once, and a
    # shared temporary name let one job rename away the file another was about to rename.
    tmp = cache.with_suffix(f".{os.getpid()}-{secrets.token_hex(4)}.tmp")
    torch.save({"images": stacked, "labels": labels, "classes": index.classes}, tmp)
    tmp.replace(cache)
    return stacked, labels, index.classes


class FolderStreamDataModule(ImageDataModule):
    """An ImageNet-style folder read from disk with random-resized crops and flips."""

    name = "folder"

    def __init__(self, options: LoaderOptions, root: str, image_size: int = 224) -> None:
        super().__init__(options)
        self.root = Path(root)
        self.image_size = image_size
        self.in_channels = 3

    def load(self) -> tuple[Dataset, Dataset]:
        train_dir, eval_dir = split_dirs(self.root)
        normalize = [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
        train_tf = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(self.image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                *normalize,
            ]
        )
        eval_tf = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(int(self.image_size / 0.875), antialias=True),
                v2.CenterCrop(self.image_size),
                *normalize,
            ]
        )
        train = datasets.ImageFolder(str(train_dir), transform=train_tf)
        val = datasets.ImageFolder(str(eval_dir), transform=eval_tf)
        self.num_classes = len(train.classes)
        check_subset_size("train_samples", self.options.train_samples, len(train), self.name)
        check_subset_size("val_samples", self.options.val_samples, len(val), self.name)
        return (
            subset(train, self.options.train_samples, self.options.seed),
            subset(val, self.options.val_samples, self.options.seed + 1),
        )


def subset(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    """A seeded random subset of `count` samples of a streamed data set (all when None)."""
    if count is None or count >= len(dataset):  # type: ignore[arg-type]
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    return Subset(dataset, order[:count].tolist())
