"""Data sets and the batch path (see docs/INTERNALS.md).

`load(dataset, seed) -> ImageData` for the image sets (digits, cifar10, cifar100, npz);
`Batches` turns uint8 images into normalised, augmented batches on the device. Language corpora
(ptb) have their own module, engine.data.ptb.
"""
from engine import catalog
from engine.data.batches import Batches, augment, augment_reference, crop_flip
from engine.data.images import DataError, ImageData, load_images
from engine.spec import Dataset


def load(dataset: Dataset, seed: int) -> ImageData:
    """The image data set `dataset` names; `seed` fixes the validation split only."""
    if dataset.name in catalog.LM_DATASETS:
        raise DataError(f"dataset.name: {dataset.name!r} is a language corpus; "
                        f"expected an image data set here (load it with engine.data.ptb)")
    if dataset.name not in ("digits", "cifar10", "cifar100", "npz"):
        raise DataError(f"dataset.name: expected one of digits, cifar10, cifar100, npz, "
                        f"found {dataset.name!r}")
    return load_images(dataset, seed)


__all__ = ["Batches", "DataError", "ImageData", "augment", "augment_reference", "crop_flip", "load"]
