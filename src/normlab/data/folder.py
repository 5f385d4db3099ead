"""ImageFolder trees (train/ and val/ or test/): the ImageNet layout.

`augment=cifar` decodes every image once into a cached uint8 tensor (all images must have
one size) and augments tensors, which is what makes CPU runs on CIFAR-sized folders fast;
`augment=imagenet` streams files through torchvision transforms (random-resized crops).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
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


CACHE_VERSION = 2  # bump when the cache's content or key changes


def decode_folder_cached(
    folder: Path, cache_dir: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of an ImageFolder as one uint8 tensor, decoded once and cached.

    The cache is keyed on every file's path, size and modification time (an image replaced
    or moved to another class gives another key) and carries a checksum of its tensors; a
    cache that fails to load or to match is rebuilt with a warning naming it."""
    index = datasets.ImageFolder(str(folder))
    check_classes(folder, index.classes)
    key = folder_key(folder, [path for path, _ in index.samples])
    cache = cache_dir / f"folder-{key[:16]}.pt"
    if cache.exists():
        saved = load_cache(cache, key)
        if saved is not None:
            return saved["images"], saved["labels"], list(saved["classes"])
    images = [decode_file(Path(path)) for path, _ in index.samples]
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
    content = {"images": stacked, "labels": labels, "classes": index.classes, "key": key}
    torch.save({**content, "checksum": tensor_checksum(stacked, labels)}, tmp)
    tmp.replace(cache)
    return stacked, labels, index.classes


def check_classes(folder: Path, classes: list[str]) -> None:
    """Refuse a folder with fewer than two class folders, naming it."""
    if len(classes) < 2:
        raise ValueError(
            f"{folder} holds {len(classes)} class folder(s) ({', '.join(classes)}); a "
            "classification data set needs at least 2"
        )


def folder_key(folder: Path, files: list[str]) -> str:
    """A hash of the folder's every file: relative path (hence class), size and mtime."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{folder.resolve()}".encode())
    for path in files:
        stat = os.stat(path)
        relative = os.path.relpath(path, folder)
        digest.update(f"|{relative}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def tensor_checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A checksum of the decoded images and their labels."""
    digest = hashlib.blake2b(images.contiguous().numpy().tobytes(), digest_size=16)
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_cache(cache: Path, key: str) -> dict | None:
    """The cache's content when it loads and matches `key` and its checksum, else None after a
    warning naming the file (the caller then decodes the folder again)."""
    try:
        saved = torch.load(cache, weights_only=True)
        if not isinstance(saved, dict) or saved.get("key") != key:
            reason = "it was made from other files"
        elif saved.get("checksum") != tensor_checksum(saved["images"], saved["labels"]):
            reason = "its checksum does not match its content (the file is damaged)"
        else:
            return saved
    except Exception as error:  # any unreadable file: truncated, empty, not a torch file
        reason = f"it cannot be read ({type(error).__name__})"
    print(
        f"normlab: warning: decoded-image cache {cache} is not used, {reason}; decoding the "
        "folder again",
        file=sys.stderr,
    )
    return None


def decode_file(path: Path) -> torch.Tensor:
    """One image file as a uint8 RGB tensor, or a ValueError naming the file."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        reason = re.sub(r"^\w+, \S+\.(?:cpp|h):\d+, ", "", reason).split(". For ")[0]
        raise ValueError(f"{path} is not an image normlab can decode ({reason})") from None


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
        check_classes(train_dir, train.classes)
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
