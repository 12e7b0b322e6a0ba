"""Images/s of the batch path (engine.data.Batches: crop + flip + normalise on the device) against
torchvision's standard DataLoader recipe on the same images.

    .venv/bin/python bench/data_path.py [--epochs 3] [--batch-size 512] [--workers 0 2]

Data: ../shared/data/cifar10/train.npz (10,000 real CIFAR-10 images) when present, else
random uint8 images of the same shape. Only the data path is timed (no model); each number is
the best epoch of --epochs, after one warm-up epoch.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from engine.data import Batches
from engine.data.images import channel_stats

NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.npz"


class PILImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: an HWC uint8 array -> PIL image -> transform."""

    def __init__(self, x_hwc, y, transform):
        self.x, self.y, self.transform = x_hwc, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def images_per_s(batches, epochs, device, set_epoch=None):
    best = 0.0
    for e in range(epochs + 1):            # epoch 0 warms up (worker start, allocator, caches)
        if set_epoch:
            set_epoch(e)
        t0, n = time.perf_counter(), 0
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            n += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if e:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()

    if NPZ.is_file():
        with np.load(NPZ) as d:
            x_hwc, y = d["x"], d["y"]
        source = f"{NPZ} ({len(x_hwc)} real CIFAR-10 images)"
    else:
        rng = np.random.default_rng(0)
        x_hwc, y = rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10000)
        source = "random uint8 images (no CIFAR-10 npz found)"
    x = torch.from_numpy(np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(y.astype(np.int64))
    mean, std = channel_stats(x)
    print(f"data: {source}; batch {args.batch_size}; best of {args.epochs} epochs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize(mean, std)])
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        ours = Batches(x, y_t, args.batch_size, mean, std, shuffle=True, augment=True, seed=0, device=dev)
        ours_rate = images_per_s(ours, args.epochs, dev, ours.set_epoch)
        for w in args.workers:
            loader = torch.utils.data.DataLoader(PILImages(x_hwc, y, tf), batch_size=args.batch_size,
                                                 shuffle=True, num_workers=w, pin_memory=dev.type == "cuda",
                                                 persistent_workers=w > 0)
            rows.append((dev.type, w, ours_rate, images_per_s(loader, args.epochs, dev)))

    print(f"{'device':<7} {'Batches img/s':>14} {'DataLoader workers':>19} {'DataLoader img/s':>17} {'ratio':>7}")
    for dev, w, ours_rate, tv_rate in rows:
        print(f"{dev:<7} {ours_rate:>14,.0f} {w:>19} {tv_rate:>17,.0f} {ours_rate / tv_rate:>6.1f}x")


if __name__ == "__main__":
    main()
