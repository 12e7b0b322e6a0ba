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
AUGMENT_SIZE = (32, 32)   # the CIFAR recipe; other sizes (8x8 digits) are never augmented


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def augment_params(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets [n, 2] int64 (row, col) in 0..2*PAD, flips [n] bool), drawn on the CPU."""
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets, flips


def reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Source index of position i of a reflect-padded axis of length n (|i| < n, like F.pad)."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by PAD, crop H x W at `offsets`, flip where `flips`: one gather per batch.

    Padding, cropping and flipping only move pixels, so together they are a per-sample map from
    output pixel to source pixel; we build that map from index arithmetic and gather once.
    """
    B, C, H, W = x.shape
    rows = reflect(torch.arange(H, device=x.device) + offsets[:, :1] - PAD, H)            # [B, H]
    j = torch.arange(W, device=x.device).expand(B, W)
    cols = reflect(torch.where(flips[:, None], W - 1 - j, j) + offsets[:, 1:] - PAD, W)  # [B, W]
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
                 drop_last=False, channels_last=False, dtype=torch.float32, rank=0, world_size=1):
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"Batches: expected uint8 images [N, C, H, W] and N labels, "
                             f"found {x.dtype} {list(x.shape)} and {len(y)} labels")
        self.device = torch.device(device)
        self.x = x.to(self.device)               # once: the whole set stays on the device
        self.y = y.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment = augment and tuple(x.shape[-2:]) == AUGMENT_SIZE
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
        """The epoch's (order, offsets, flips), on the CPU. Augmentation is drawn first and per
        sample, so it does not depend on shuffle or the batch size."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        offsets, flips = augment_params(len(self.x), g) if self.augment else (None, None)
        order = torch.randperm(len(self.x), generator=g) if self.shuffle else torch.arange(len(self.x))
        return order, offsets, flips

    def __iter__(self):
        order, offsets, flips = (t if t is None else t.to(self.device) for t in self.plan())
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            x = self.x[idx]
            if self.augment:
                x = crop_flip(x, offsets[idx], flips[idx])
            if self.channels_last:   # on the uint8 batch: 4x fewer bytes to move than after
                x = x.contiguous(memory_format=torch.channels_last)
            x = torch.addcmul(self.shift, x.to(torch.float32), self.scale).to(self.dtype)
            yield x, self.y[idx]
