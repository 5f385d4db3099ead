"""LightningDataModules: digits (default), cifar10/100, image folders, synthetic."""

from normlab.data.base import ImageDataModule, LoaderOptions
from normlab.data.build import available_datasets, build_datamodule

__all__ = ["ImageDataModule", "LoaderOptions", "available_datasets", "build_datamodule"]
