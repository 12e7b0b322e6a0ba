"""Data sets and the batch path (see docs/INTERNALS.md).

`load(dataset, seed) -> ImageData` for the image sets (digits, cifar10, cifar100, npz);
`Batches` turns uint8 images into normalised, augmented batches on the device. Language corpora
(ptb) have their own module, engine.data.ptb.
"""
from typing import NamedTuple

import torch

from engine import catalog
from engine.data.batches import Batches, augment, augment_reference, crop_flip
from engine.data.images import DataError, ImageData, load_images
from engine.spec import Dataset


def is_file_dataset(name: str) -> bool:
    """imagefolder, hf, torchvision:NAME (engine/data/files.py): any size, in memory or streamed."""
    return name in catalog.FILE_DATASETS or name.startswith("torchvision:")


def batches_for(x, y, batch_size, data: ImageData, **kw):
    """The batches of a split: Batches over uint8 tensors in memory, StreamBatches over a
    streamed split (the same order and augmentation either way)."""
    if isinstance(x, torch.Tensor):
        return Batches(x, y, batch_size, data.mean, data.std, crop=data.crop, **kw)
    from engine.data.streamed import StreamBatches
    return StreamBatches(x, y, batch_size, data.mean, data.std, crop=data.crop, **{"workers": data.workers, **kw})


def load(dataset: Dataset, seed: int) -> ImageData:
    """The image data set `dataset` names; `seed` fixes the validation split only."""
    if dataset.name in catalog.LM_DATASETS:
        raise DataError(f"dataset.name: {dataset.name!r} is a language corpus; "
                        f"expected an image data set here (load it with engine.data.ptb)")
    if is_file_dataset(dataset.name):
        from engine.data.files import load_files
        return load_files(dataset, seed)
    if dataset.name not in ("digits", "cifar10", "cifar100", "npz"):
        raise DataError(f"dataset.name: expected one of digits, cifar10, cifar100, npz, "
                        f"found {dataset.name!r}")
    return load_images(dataset, seed)


__all__ = ["Batches", "DataError", "ImageData", "Shape", "augment", "batches_for", "augment_reference", "crop_flip", "describe", "load"]


class Shape(NamedTuple):
    num_classes: int
    in_channels: int
    image_size: tuple


KNOWN_SHAPES = {"digits": Shape(10, 1, (8, 8)), "cifar10": Shape(10, 3, (32, 32)), "cifar100": Shape(100, 3, (32, 32))}


def describe(dataset: Dataset) -> Shape:
    """(classes, channels, image size) of an image data set, reading as little as it can
    (engine/check.py builds models for it on the meta device). DataError when it cannot be read."""
    if dataset.name in KNOWN_SHAPES:
        shape = KNOWN_SHAPES[dataset.name]
        return shape._replace(num_classes=dataset.options.get("num_classes", shape.num_classes))
    if is_file_dataset(dataset.name):
        from engine.data import files
        return Shape(*files.describe(dataset))
    data = load(dataset, 0)
    return Shape(data.num_classes, data.in_channels, tuple(data.train_x.shape[-2:]))
