"""Images/s of the streamed data path (engine/data/streamed.py) on an ImageFolder of 64x64 PNGs,
with 0, 1 and 2 workers, against a plain torchvision loop doing the same work
(torchvision.datasets.ImageFolder + transforms.v2 RandomResizedCrop(64) + flip + normalise in a
DataLoader with the same workers), and the in-memory path (engine.data.Batches) on the same images.

    .venv/bin/python bench/streamed_path.py [--images 2000] [--batch-size 128] [--epochs 2] [--npz PATH]

Data: the first --images real CIFAR-10 images of ../shared/data/cifar10/train.npz, upsampled to
64x64 and written as PNGs into a temporary ImageFolder (train/<class>/, val/<class>/) that is
removed afterwards. Only the data path is timed (no model); each number is the best of
--epochs epochs after a warm-up epoch; the ratio is ours / torchvision's at the same workers.
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import spec
from engine.data import batches_for, load

NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.npz"


def write_folder(root: Path, n: int, npz: Path) -> None:
    d = np.load(npz)
    x, y = d["x"][:n], d["y"][:n]
    for split, rows in (("train", range(n)), ("val", range(min(n, 100)))):
        for i in rows:
            folder = root / split / f"c{y[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).resize((64, 64), Image.BICUBIC).save(folder / f"{i:05d}.png")


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def rate(loader, epochs: int, set_epoch=None) -> float:
    best = 0.0
    for e in range(epochs + 1):   # epoch 0 warms up (worker start, caches)
        if set_epoch:
            set_epoch(e)
        n, t0 = 0, time.perf_counter()
        for x, _ in loader:
            n += len(x)
        if e:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def torchvision_loop(root: Path, batch_size: int, workers: int, mean, std):
    import torchvision
    from torchvision.transforms import v2
    t = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(64, antialias=True), v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=t)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--npz", type=Path, default=NPZ, help="CIFAR-10 npz (default: ../shared/data/cifar10/train.npz)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.images, args.npz)
        table = {"name": "imagefolder", "root": str(root), "image_size": 64, "crop": "resized"}
        ds = lambda **kw: spec.loads("[[experiment]]\nname = \"b\"\ndataset = { " + ", ".join(  # noqa: E731
            f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
            for k, v in {**table, **kw}.items()) + " }\n").experiments["b"].dataset
        streamed = load(ds(stream=True), 0)
        print(f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores, torch {torch.__version__}, torch threads 1; "
              f"{len(streamed.train_x)} PNGs 64x64, batch {args.batch_size}, RandomResizedCrop(64) + flip")
        print(f"{'path':<34} {'workers':>7} {'images/s':>10} {'ours/torchvision':>17}")
        for w in args.workers:
            ours = batches_for(streamed.train_x, streamed.train_y, args.batch_size, streamed, shuffle=True,
                               augment=True, seed=0, device="cpu", workers=w)
            plain = torchvision_loop(root, args.batch_size, w, streamed.mean, streamed.std)
            a, b = rate(ours, args.epochs, ours.set_epoch), rate(plain, args.epochs)
            print(f"{'streamed (engine.data.streamed)':<34} {w:>7} {a:>10.0f} {a / b:>17.2f}")
            print(f"{'torchvision ImageFolder loop':<34} {w:>7} {b:>10.0f}")
        memory = load(ds(stream=False), 0)
        for crop in ("resized", "pad"):
            memory.crop = crop
            b = batches_for(memory.train_x, memory.train_y, args.batch_size, memory, shuffle=True, augment=True,
                            seed=0, device="cpu")
            print(f"{'in memory (Batches), crop ' + crop:<34} {'-':>7} {rate(b, args.epochs, b.set_epoch):>10.0f}")


if __name__ == "__main__":
    main()
