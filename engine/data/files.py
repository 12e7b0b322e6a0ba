"""Image data sets read from the user's files, at any image size (issue 24).

- imagefolder:      torchvision's layout: `root/train/<class>/*.png|jpg|...` and `root/val/` (or
                    `root/test/`) with the same class folders; classes are the sorted folder names.
- torchvision:NAME: a torchvision.datasets class (MNIST, SVHN, STL10, ...) with download = false,
                    its train and test splits (`train=True/False`, or `split="train"/"test"`).
- hf:               a Hugging Face `datasets` directory saved with `save_to_disk` (`path`, or
                    `root`): a DatasetDict with a train split and a test (or validation) split,
                    an image column and an integer label column (the extra `ban[hf]`).

Every image is decoded to uint8 [C, H, W] (1 channel when the first training image is grey,
else RGB). Evaluation sees it resized (shorter side) to `image_size` and centre-cropped.
Where it goes: in memory (uint8 tensors at image_size, the on-device path of batches.py) when
train + test at image_size take at most IN_MEMORY_BYTES, else streamed (streamed.py: a DataLoader
with workers); `stream = true / false` forces either. The normalisation statistics come from the
first STAT_IMAGES training images (in file order) either way, so both paths give the same batches.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import torch

from engine import catalog
from engine.data.images import DataError, ImageData, stratified_split
from engine.spec import Dataset

IN_MEMORY_BYTES = 2 << 30   # 2 GiB of uint8 images: CIFAR (180 MB) and Tiny-ImageNet at 64 (1.35 GB) fit
STAT_IMAGES = 512
VERIFY_IMAGES = 20_000      # `ban validate` opens every image of a folder up to this many, else an even sample
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def to_tensor(img) -> torch.Tensor:
    """A PIL image, array or tensor as uint8 [C, H, W]."""
    if isinstance(img, torch.Tensor):
        t = img if img.ndim == 3 else img.unsqueeze(0)
        return t.to(torch.uint8)
    if not isinstance(img, np.ndarray):
        img = np.asarray(img.convert("L" if img.mode in ("L", "1", "I", "I;16", "F") else "RGB"))
    a = img if img.ndim == 3 else img[..., None]
    return torch.from_numpy(a.transpose(2, 0, 1).copy()).to(torch.uint8)


class Source:
    """One split: `labels` (int64 [N]), `decode(i)` -> uint8 [C, H, W] at the file's own size."""
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, indices) -> "Subset":
        return Subset(self, indices)


class Subset(Source):
    def __init__(self, base: Source, indices: torch.Tensor):
        self.base, self.indices = base, indices
        self.labels = base.labels[indices]

    def decode(self, i: int) -> torch.Tensor:
        return self.base.decode(int(self.indices[i]))


class FolderSource(Source):
    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.labels = files, torch.tensor(labels, dtype=torch.int64)

    def decode(self, i: int) -> torch.Tensor:
        from PIL import Image
        try:
            with Image.open(self.files[i]) as img:
                return to_tensor(img)
        except Exception as exc:   # noqa: BLE001 - a truncated or non-image file: name it
            raise DataError(f"{self.files[i]}: expected an image, could not read it ({type(exc).__name__}: {exc})") from None


class Column:
    """Item i's image: `dataset[i][key]` (a class, not a lambda: workers may be spawned)."""
    def __init__(self, key):
        self.key = key

    def __call__(self, dataset, i):
        return dataset[i][self.key]


class ItemSource(Source):
    """A torchvision or Hugging Face data set: item i -> (image, label) through `get`."""
    def __init__(self, dataset, labels, get):
        self.dataset, self.labels, self.get = dataset, torch.as_tensor(np.asarray(labels), dtype=torch.int64), get

    def decode(self, i: int) -> torch.Tensor:
        return to_tensor(self.get(self.dataset, i))


# ---- the three kinds ------------------------------------------------------------------------

def image_folder(root: Path, split: str, classes: list[str] | None) -> tuple[FolderSource, list[str]]:
    base = root / split
    found = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    classes = classes or found
    if not classes:
        raise DataError(f"{base}: expected class folders of images (torchvision's ImageFolder layout "
                        f"{split}/<class>/<image>), found none")
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((base / name).glob("*")) if (base / name).is_dir() else []:
            if f.suffix.lower() in EXTENSIONS:
                files.append(f)
                labels.append(label)
    if not files:
        raise DataError(f"{base}: expected images ({', '.join(EXTENSIONS)}) in its class folders, found none")
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{base}: expected the training set's classes, found class folders {extra} it does not have")
    return FolderSource(files, labels), classes


def load_imagefolder(dataset: Dataset):
    root = Path(dataset.root).expanduser()
    train, classes = image_folder(root, "train", None)
    test_split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    if test_split is None:
        raise DataError(f"{root}: expected a val/ or test/ folder beside train/, found neither")
    test, _ = image_folder(root, test_split, classes)
    return train, test, len(classes)


def labels_of(ds) -> list:
    for attr in ("targets", "labels"):
        if getattr(ds, attr, None) is not None:
            return list(np.asarray(getattr(ds, attr)))
    return [int(ds[i][1]) for i in range(len(ds))]


def load_torchvision(dataset: Dataset):
    import torchvision.datasets as tvd
    name = dataset.name.split(":", 1)[1]
    cls = getattr(tvd, name, None)
    if not inspect.isclass(cls):
        raise DataError(f"dataset.name: torchvision.datasets has no data set class {name!r}")
    params = inspect.signature(cls).parameters
    splits = [{"train": True}, {"train": False}] if "train" in params else [{"split": "train"}, {"split": "test"}]
    root = str(Path(dataset.root).expanduser())
    out = []
    for kw in splits:
        try:
            ds = cls(root, download=False, **kw) if "download" in params else cls(root, **kw)
        except Exception as exc:   # noqa: BLE001 - missing files, a bad root: torchvision says which
            raise DataError(f"{dataset.name}: cannot open it in {root} with {kw} and download = false "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
        out.append(ItemSource(ds, labels_of(ds), Column(0)))
    classes = getattr(out[0].dataset, "classes", None)
    return out[0], out[1], len(classes) if classes else None


def load_hf(dataset: Dataset):
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise DataError(f"dataset: 'hf' needs the datasets package, which is not installed; install it with: "
                        f"{catalog.EXTRAS['hf'][1]}") from None
    where = str(Path(dataset.path or dataset.root).expanduser())
    try:
        d = datasets.load_from_disk(where)
    except Exception as exc:   # noqa: BLE001
        raise DataError(f"{where}: expected a directory saved with datasets' save_to_disk, could not load it "
                        f"({type(exc).__name__}: {exc})") from None
    if not isinstance(d, datasets.DatasetDict) or "train" not in d:
        raise DataError(f"{where}: expected a DatasetDict with a 'train' split, found {type(d).__name__}"
                        + (f" with splits {list(d)}" if isinstance(d, datasets.DatasetDict) else ""))
    test_split = next((s for s in ("test", "validation", "val") if s in d), None)
    if test_split is None:
        raise DataError(f"{where}: expected a 'test' or 'validation' split beside 'train', found {list(d)}")
    cols = d["train"].column_names
    image = next((c for c in ("image", "img") if c in cols), None)
    label = next((c for c in ("label", "labels", "fine_label") if c in cols), None)
    if image is None or label is None:
        raise DataError(f"{where}: expected an image column (image, img) and a label column (label, labels), found {cols}")
    feature = d["train"].features[label]
    classes = len(feature.names) if hasattr(feature, "names") else None
    get = Column(image)
    return (ItemSource(d["train"], d["train"][label], get), ItemSource(d[test_split], d[test_split][label], get), classes)


def open_sources(dataset: Dataset):
    """(train, test, class count or None) of a file data set."""
    if dataset.name == "imagefolder":
        return load_imagefolder(dataset)
    if dataset.name == "hf":
        return load_hf(dataset)
    return load_torchvision(dataset)


# ---- the shared part ------------------------------------------------------------------------

def resize_centre(x: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation's transform: the shorter side resized to `size`, then the centre size x size."""
    from torchvision.transforms.v2 import functional as TF
    if tuple(x.shape[-2:]) != (size, size):
        x = TF.center_crop(TF.resize(x, size, antialias=True), [size, size])
    return x


def prepared(source: Source, i: int, size: int, channels: int) -> torch.Tensor:
    x = source.decode(i)
    if x.shape[0] != channels:   # a grey image in a colour set, or the other way round
        x = x.expand(3, -1, -1) if channels == 3 else x.float().mean(0, keepdim=True).round().to(torch.uint8)
    return resize_centre(x, size) if size else x


def stats_of(source: Source, size: int, channels: int) -> tuple[tuple, tuple]:
    from engine.data.images import channel_stats
    n = min(len(source), STAT_IMAGES)
    return channel_stats(torch.stack([prepared(source, i, size, channels) for i in range(n)]))


def default_crop(dataset: Dataset) -> str | None:
    """RandomResizedCrop at 64 pixels and more, the scaled pad-crop below; none without augment."""
    if not dataset.augment:
        return None
    crop = dataset.crop or ("resized" if dataset.image_size >= 64 else "pad")
    return None if crop == "none" else crop


def load_files(dataset: Dataset, seed: int) -> ImageData:
    """A file data set as ImageData: uint8 tensors when in memory, Sources when streamed."""
    train, test, classes = open_sources(dataset)
    size = dataset.image_size
    found = int(max(train.labels.max(), test.labels.max())) + 1
    num_classes = dataset.options.get("num_classes", classes or found)
    if found > num_classes:
        raise DataError(f"{dataset.name}: expected labels 0..{num_classes - 1}, found label {found - 1}")
    channels = train.decode(0).shape[0]
    val = None
    if dataset.val_split > 0:
        kept, held = stratified_split(train.labels, dataset.val_split, seed)
        train, val = train.subset(kept), train.subset(held)
    mean, std = stats_of(train, size, channels)
    streamed = dataset.stream if dataset.stream is not None else \
        (len(train) + len(test) + (len(val) if val else 0)) * channels * size * size > IN_MEMORY_BYTES
    train_y, val_y, test_y = train.labels, val.labels if val is not None else None, test.labels
    if not streamed:
        whole = lambda s: torch.stack([prepared(s, i, size, channels) for i in range(len(s))])  # noqa: E731
        train, test, val = whole(train), whole(test), (whole(val) if val is not None else None)
    else:   # the batches decode through `prepared` too
        train, test, val = (s if s is None else Prepared(s, size, channels) for s in (train, test, val))
    return ImageData(train_x=train, train_y=train_y, val_x=val, val_y=val_y, test_x=test, test_y=test_y,
                     num_classes=num_classes, in_channels=channels, mean=mean, std=std, name=dataset.name,
                     crop=default_crop(dataset), workers=dataset.workers)


class Prepared:
    """A streamed split: `raw(i)` the decoded image at its own size (what RandomResizedCrop
    crops), `eval(i)` resized and centre-cropped to the image size (what the rest sees)."""
    def __init__(self, source: Source, size: int, channels: int):
        self.source, self.size, self.channels = source, size, channels

    def __len__(self) -> int:
        return len(self.source)

    def raw(self, i: int) -> torch.Tensor:
        return prepared(self.source, i, 0, self.channels)

    def eval(self, i: int) -> torch.Tensor:
        return prepared(self.source, i, self.size, self.channels)


def describe(dataset: Dataset):
    """(classes, channels, image size) without decoding the whole set: the sources are listed, the
    first training image decoded, and for an ImageFolder every file opened (PIL verify; an even
    sample of VERIFY_IMAGES of a larger folder)."""
    train, test, classes = open_sources(dataset)
    if dataset.name == "imagefolder":
        from PIL import Image
        files = train.files + test.files
        for f in files[::max(1, len(files) // VERIFY_IMAGES)]:
            try:
                with Image.open(f) as img:
                    img.verify()
            except Exception as exc:   # noqa: BLE001
                raise DataError(f"{f}: expected an image, could not read it ({type(exc).__name__}: {exc})") from None
    found = int(max(train.labels.max(), test.labels.max())) + 1
    return dataset.options.get("num_classes", classes or found), train.decode(0).shape[0], (dataset.image_size,) * 2
