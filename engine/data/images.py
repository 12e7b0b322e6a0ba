"""Image classification data sets, loaded whole into uint8 NCHW CPU tensors.

Every loader returns the raw train and test splits; `load` then does what is common to all of
them (the validation split, the class count, the normalisation statistics), so each step lives
in one place. Sets:
- digits:   scikit-learn's bundled 8x8 digits (no download), a fixed stratified train/test split;
            option train_images keeps a fixed stratified cut of about that many training images
            (the same for every seed; a harder task, as the quickstart uses).
- cifar10, cifar100: torchvision's pickles (`cifar-10-batches-py/`, `cifar-100-python/`) in `root`.
- npz:      your own data: `train.npz` and `test.npz` in `root` with arrays `x` (uint8 NHWC or
            NHW) and `y` (integer labels); the file names can be changed in `options`.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.spec import Dataset

DIGITS_TEST_FRACTION = 0.2   # the fixed digits test split: 1438 train / 359 test images
DIGITS_SPLIT_SEED = 0        # fixed, so every experiment seed sees the same test set


class DataError(Exception):
    """A data set that cannot be loaded; the message is one line naming the file and the fix."""


@dataclass
class ImageData:
    train_x: torch.Tensor            # uint8 [N, C, H, W]
    train_y: torch.Tensor            # int64 [N]
    val_x: torch.Tensor | None       # held out of the training set (None when val_split == 0)
    val_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    mean: tuple                      # per channel, 0..1 scale, from train_x
    std: tuple
    name: str
    kind: str = "image"
    crop: str | None = "auto"        # batches.py: "auto" (pad-crop at 32x32), "pad", "resized", None
    workers: int | None = None       # DataLoader workers of a streamed set (engine/data/streamed.py)


# ---- the shared steps -----------------------------------------------------------------------

def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) sorted indices: round(fraction * n_c) of each class c held out at random.

    Every class keeps at least one sample, so no class vanishes from the kept part.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    order = order[torch.argsort(y[order], stable=True)]      # grouped by class, random within
    classes, counts = torch.unique(y, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(y)) - torch.repeat_interleave(starts, counts)   # rank within its class
    n_held = torch.minimum(torch.round(counts * fraction).long(), counts - 1)
    held = rank < torch.repeat_interleave(n_held, counts)
    return order[~held].sort().values, order[held].sort().values


def channel_stats(x: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 images on the 0..1 scale, exact (float64 sums in chunks
    so 50k CIFAR images never need a full float copy)."""
    s1 = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros(x.shape[1], dtype=torch.float64)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64)
        s1 += c.sum((0, 2, 3))
        s2 += (c * c).sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).clamp_min(1e-3).tolist())


def load_images(dataset: Dataset, seed: int) -> ImageData:
    """Load an image data set; `seed` fixes only the validation split."""
    allowed = OPTIONS[dataset.name]
    for key in dataset.options:
        if key not in allowed:
            raise DataError(f"dataset.options: unknown key {key!r} for data set {dataset.name!r}; "
                            f"expected one of: {', '.join(allowed)}")
    train_x, train_y, test_x, test_y = LOADERS[dataset.name](dataset)

    found = int(max(train_y.max(), test_y.max())) + 1
    num_classes = dataset.options.get("num_classes", CLASSES.get(dataset.name, found))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise DataError(f"dataset.options.num_classes: expected a positive integer, found {num_classes!r}")
    if found > num_classes:
        where = "dataset.options.num_classes" if "num_classes" in dataset.options else dataset.name
        raise DataError(f"{where}: expected labels 0..{num_classes - 1} ({num_classes} classes), "
                        f"found label {found - 1}")

    val_x = val_y = None
    if dataset.val_split > 0:
        kept, held = stratified_split(train_y, dataset.val_split, seed)
        val_x, val_y = train_x[held], train_y[held]
        train_x, train_y = train_x[kept], train_y[kept]

    mean, std = channel_stats(train_x)
    return ImageData(train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, test_x=test_x,
                     test_y=test_y, num_classes=num_classes, in_channels=train_x.shape[1],
                     mean=mean, std=std, name=dataset.name)


def root_of(dataset: Dataset) -> Path:
    if not dataset.root:
        raise DataError(f"dataset.root: expected a data directory for data set {dataset.name!r}, found none")
    return Path(dataset.root).expanduser()


# ---- digits ---------------------------------------------------------------------------------

def load_digits(dataset: Dataset):
    from sklearn.datasets import load_digits as sklearn_digits
    d = sklearn_digits()
    x = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    train, test = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    n = dataset.options.get("train_images")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 10 <= n <= len(train):
            raise DataError(f"dataset.options.train_images: expected an integer in 10..{len(train)}, found {n!r}")
        _, cut = stratified_split(y[train], n / len(train), DIGITS_SPLIT_SEED)
        train = train[cut]
    return x[train], y[train], x[test], y[test]


# ---- CIFAR (torchvision's pickle format) ----------------------------------------------------

CIFAR = {  # name: (folder, train files, test files, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def load_cifar(dataset: Dataset):
    folder, train_files, test_files, label_key = CIFAR[dataset.name]
    base = root_of(dataset) / folder
    if dataset.download:
        download_cifar(dataset)
    for f in train_files + test_files:
        if not (base / f).is_file():
            raise DataError(f"{dataset.name}: expected torchvision's {folder}/ with {f} at {base}, "
                            f"found no {base / f}; set download = true in the dataset table, "
                            f"or place torchvision's {folder} in {root_of(dataset)}")
    train_x, train_y = read_cifar_pickles([base / f for f in train_files], label_key)
    test_x, test_y = read_cifar_pickles([base / f for f in test_files], label_key)
    return train_x, train_y, test_x, test_y


def download_cifar(dataset: Dataset) -> None:
    """torchvision's download into dataset.root by one process: under DDP rank 0 downloads and
    extracts while the other ranks wait, then every rank learns whether it worked (a broadcast,
    which is also the barrier), so no rank reads a half-extracted file."""
    from engine import ddp
    error = None
    if ddp.rank() == 0:
        try:
            fetch_cifar(dataset.name, root_of(dataset))
        except Exception as exc:  # network, disk, checksum: say which and where
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    error = ddp.broadcast_object(error)
    if error is not None:
        raise DataError(f"{dataset.name}: download into {root_of(dataset)} failed: {error}")


def fetch_cifar(name: str, root: Path) -> None:
    import torchvision.datasets as tvd   # only here: the rest of the module does not need it
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    for train in (True, False):
        cls(str(root), train=train, download=True)


def read_cifar_pickles(paths, label_key):
    xs, ys = [], []
    for p in paths:
        try:
            with open(p, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as exc:
            raise DataError(f"{p}: expected a CIFAR pickle with 'data' and {label_key!r}, "
                            f"could not read it ({type(exc).__name__}: {exc})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DataError(f"{p}: expected 'data' of shape [N, 3072] and N labels, "
                            f"found {list(data.shape)} and {len(labels)} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


# ---- npz: bring your own data ---------------------------------------------------------------

def load_npz(dataset: Dataset):
    root = root_of(dataset)
    train_x, train_y = read_npz(root / dataset.options.get("train", "train.npz"))
    test_x, test_y = read_npz(root / dataset.options.get("test", "test.npz"))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{root}: expected train and test images of the same C x H x W, found "
                        f"{list(train_x.shape[1:])} and {list(test_x.shape[1:])}")
    return train_x, train_y, test_x, test_y


def read_npz(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: expected an .npz file with arrays x (uint8 NxHxWxC) and y (labels), "
                        f"found no such file")
    try:
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in ("x", "y") if k in d.files}
            files = d.files
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: expected an .npz file, could not read it ({exc})") from None
    for k in ("x", "y"):
        if k not in arrays:
            raise DataError(f"{path}: expected an array {k!r}, found only {files}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}: x: expected uint8 images of shape NxHxWxC or NxHxW, "
                        f"found {x.dtype} of shape {list(x.shape)}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise DataError(f"{path}: y: expected {len(x)} integer labels (shape [{len(x)}]), "
                        f"found {y.dtype} of shape {list(y.shape)}")
    if len(y) == 0 or y.min() < 0:
        raise DataError(f"{path}: y: expected labels >= 0 and at least one sample, "
                        f"found {len(y)} samples" + (f", min label {y.min()}" if len(y) else ""))
    if x.ndim == 3:
        x = x[..., None]
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(y.astype(np.int64))


CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}   # npz: counted from its labels
LOADERS = {"digits": load_digits, "cifar10": load_cifar, "cifar100": load_cifar, "npz": load_npz}
OPTIONS = {"digits": ("num_classes", "train_images"), "cifar10": ("num_classes",), "cifar100": ("num_classes",),
           "npz": ("train", "test", "num_classes")}
