"""The batch path: the whole uint8 set lives on the device; each batch is cropped, flipped and
normalised there (no DataLoader, no workers: a GPU does this far faster than CPU workers).

Every random number (the epoch's order, each sample's crop offset and flip) is drawn up front on
a CPU generator seeded by (seed, epoch), per sample rather than per batch position. So an epoch's
batches are the same on the CPU and the GPU and after a resume, and sample i of epoch e always
gets the same augmentation whatever the batch size or order (teacher outputs can be cached).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAD = 4                   # reflect-pad 4 pixels, then crop back: offsets 0..2*PAD per axis
AUGMENT_SIZE = (32, 32)   # the CIFAR recipe; by default ("auto") other sizes (8x8 digits) are not augmented
# Crops (dataset.crop): "pad" reflect-pads by PAD scaled to the image (4 at 32 pixels, 8 at 64)
# and crops back; "resized" is RandomResizedCrop's (scale 0.08..1, aspect 3/4..4/3) box, given
# as fractions of the image so that a streamed source at any size gets the same box; "none".
CROPS = ("pad", "resized", "none")
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def pad_for(size: int) -> int:
    """The "pad" crop's padding for images of side `size`: PAD at 32 pixels, in proportion."""
    return max(1, round(PAD * size / 32))


def augment_params(n: int, generator: torch.Generator, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets [n, 2] int64 (row, col) in 0..2*pad, flips [n] bool), drawn on the CPU."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets, flips


def resized_params(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes [n, 4] float64 (top, left, height, width) as fractions of the image, flips [n]):
    RandomResizedCrop's area scale and log-uniform aspect ratio, one draw per sample, clamped
    to the image (torchvision retries up to 10 times instead; one draw keeps it per sample)."""
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
    area = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0]
    ratio = torch.exp(math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[:, 1])
    h, w = (area / ratio).sqrt().clamp(max=1.0), (area * ratio).sqrt().clamp(max=1.0)
    boxes = torch.stack([(1 - h) * u[:, 2], (1 - w) * u[:, 3], h, w], 1)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return boxes, flips


def box_pixels(box, height: int, width: int) -> tuple[int, int, int, int]:
    """A fractional (top, left, h, w) box in whole pixels of an image of that size (at least 1)."""
    t, l, h, w = (float(v) for v in box)
    hh, ww = max(1, round(h * height)), max(1, round(w * width))
    return min(round(t * height), height - hh), min(round(l * width), width - ww), hh, ww


def resized_crop(x: torch.Tensor, box, flip, size: tuple) -> torch.Tensor:
    """One uint8 image [C, H, W] cropped to the fractional box, resized to `size`, flipped."""
    from torchvision.transforms.v2 import functional as TF
    t, l, h, w = box_pixels(box, *x.shape[-2:])
    out = TF.resized_crop(x, t, l, h, w, list(size), antialias=True)
    return out.flip(-1) if flip else out


def epoch_plan(n: int, seed: int, epoch: int, shuffle: bool, crop: str | None, pad: int):
    """The epoch's (order, augmentation params, flips), on the CPU, from (seed, epoch) and per
    sample: augmentation is drawn first, so it depends on neither the order nor the batch size.
    The in-memory and the streamed batches both draw it here (the same numbers either way)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    params, flips = (augment_params(n, g, pad) if crop == "pad" else resized_params(n, g) if crop == "resized"
                     else (None, None))
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    return order, params, flips


def auto_crop(crop: str | None, size: tuple) -> str | None:
    """The crop Batches applies: "auto" is "pad" at 32x32 and none otherwise (the CIFAR recipe)."""
    if crop == "auto":
        return "pad" if tuple(size) == AUGMENT_SIZE else None
    return None if crop == "none" else crop


def reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Source index of position i of a reflect-padded axis of length n (|i| < n, like F.pad)."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Reflect-pad by `pad`, crop H x W at `offsets`, flip where `flips`: one gather per batch.

    Padding, cropping and flipping only move pixels, so together they are a per-sample map from
    output pixel to source pixel; we build that map from index arithmetic and gather once.
    """
    B, C, H, W = x.shape
    rows = reflect(torch.arange(H, device=x.device) + offsets[:, :1] - pad, H)            # [B, H]
    j = torch.arange(W, device=x.device).expand(B, W)
    cols = reflect(torch.where(flips[:, None], W - 1 - j, j) + offsets[:, 1:] - pad, W)  # [B, W]
    src = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
    return x.reshape(B, C, H * W).gather(2, src).view(B, C, H, W)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random reflect-pad-4 crop and horizontal flip of uint8 images [B, C, H, W] on any device;
    the random numbers come from the CPU `generator`."""
    offsets, flips = augment_params(len(x), generator)
    return crop_flip(x, offsets.to(x.device), flips.to(x.device))


def augment_reference(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The same as crop_flip, one sample at a time with F.pad: the slow, obvious version the tests
    check the fast one against."""
    H, W = x.shape[-2:]
    out = []
    for b in range(len(x)):
        padded = F.pad(x[b:b + 1].float(), (PAD, PAD, PAD, PAD), mode="reflect")[0]
        dy, dx = int(offsets[b, 0]), int(offsets[b, 1])
        crop = padded[:, dy:dy + H, dx:dx + W]
        out.append(crop.flip(-1) if flips[b] else crop)
    return torch.stack(out).to(torch.uint8)


class Batches:
    """Batches of (x normalised, y int64) on `device` from uint8 images [N, C, H, W].

    x = (x/255 - mean) / std in `dtype`, optionally channels_last. Call set_epoch(e) before each
    epoch. With world_size > 1 (DDP) every global batch of `batch_size` is split into world_size
    contiguous parts and this rank yields part `rank` (all ranks share the seed, so the same
    order); use drop_last=True then, so that no rank gets an empty batch.
    """

    def __init__(self, x, y, batch_size, mean, std, *, shuffle, augment, seed, device,
                 drop_last=False, channels_last=False, dtype=torch.float32, rank=0, world_size=1, crop="auto"):
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"Batches: expected uint8 images [N, C, H, W] and N labels, "
                             f"found {x.dtype} {list(x.shape)} and {len(y)} labels")
        self.device = torch.device(device)
        self.x = x.to(self.device)               # once: the whole set stays on the device
        self.y = y.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.crop = auto_crop(crop, x.shape[-2:]) if augment else None
        self.augment, self.pad = self.crop is not None, pad_for(x.shape[-1])
        self.drop_last, self.channels_last, self.dtype = drop_last, channels_last, dtype
        self.rank, self.world_size = rank, world_size
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1 / (255 * std)).to(self.device)   # (x/255 - mean) / std = x*scale + shift
        self.shift = (-mean / std).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def plan(self):
        """The epoch's (order, offsets or boxes, flips), on the CPU (epoch_plan)."""
        return epoch_plan(len(self.x), self.seed, self.epoch, self.shuffle, self.crop, self.pad)

    def __iter__(self):
        order, offsets, flips = (t if t is None else t.to(self.device) for t in self.plan())
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            x = self.x[idx]
            if self.crop == "pad":
                x = crop_flip(x, offsets[idx], flips[idx], self.pad)
            elif self.crop == "resized":   # per sample: each has its own box
                x = torch.stack([resized_crop(x[k], offsets[i], flips[i], x.shape[-2:]) for k, i in enumerate(idx.tolist())])
            if self.channels_last:   # on the uint8 batch: 4x fewer bytes to move than after
                x = x.contiguous(memory_format=torch.channels_last)
            x = torch.addcmul(self.shift, x.to(torch.float32), self.scale).to(self.dtype)
            yield x, self.y[idx]
