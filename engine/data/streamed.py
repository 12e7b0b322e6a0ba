"""The streamed batch path, for data sets that do not fit in memory (engine/data/files.py decides).

`StreamBatches` has the interface of `batches.Batches` (set_epoch, len, iteration over
(normalised x on the device, y)), so the training loop does not know which it has. A
torch.utils.data.DataLoader decodes and transforms the images in `workers` processes with
pin_memory on CUDA; the transforms are torchvision.transforms.v2's functional ones: training
RandomResizedCrop (or the scaled pad-crop) + horizontal flip, evaluation resize + centre crop.

No random number is drawn in a worker: the epoch's order and every sample's crop and flip come
from `batches.epoch_plan` (seeded by (seed, epoch), one draw per sample) in this process, and
the batch sampler hands each worker keys (sample index, its crop, its flip). So the batches are
those of the in-memory path, the same after a resume, whatever the worker count; and the
teacher sees the student's augmented batch (the loop feeds both the one x). Under DDP the
sampler gives this rank its contiguous part of each global batch, as Batches does (the role of
a DistributedSampler, in the in-memory path's order, so the two paths agree under DDP too).
"""
from __future__ import annotations

import math
import os

import torch
from torch.utils.data import DataLoader, Dataset

from engine.data.batches import crop_flip, epoch_plan, pad_for, resized_crop


def default_workers() -> int:
    return min(4, max(1, (os.cpu_count() or 2) - 1))


class Keyed(Dataset):
    """Item (index, crop, params, flip) -> (uint8 [C, S, S], index): decoded and transformed."""

    def __init__(self, split, pad: int):
        self.split, self.pad = split, pad

    def __len__(self):
        return len(self.split)

    def __getitem__(self, key):
        i, crop, params, flip = key
        if crop == "resized":
            return resized_crop(self.split.raw(i), params, flip, (self.split.size,) * 2), i
        x = self.split.eval(i)
        if crop == "pad":
            x = crop_flip(x[None], torch.tensor([params]), torch.tensor([flip]), self.pad)[0]
        return x, i


def _one_thread(_):   # each worker decodes one image at a time: threads would only contend
    torch.set_num_threads(1)


class StreamBatches:
    """Batches of (x normalised, y) on `device` from a streamed split (files.Prepared)."""

    def __init__(self, split, y, batch_size, mean, std, *, shuffle, augment, seed, device, drop_last=False,
                 channels_last=False, dtype=torch.float32, rank=0, world_size=1, crop=None, workers=None):
        self.device = torch.device(device)
        self.split, self.y = split, torch.as_tensor(y).to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.crop = crop if augment and crop != "auto" else None
        self.augment, self.pad = self.crop is not None, pad_for(split.size)
        self.drop_last, self.channels_last, self.dtype = drop_last, channels_last, dtype
        self.rank, self.world_size = rank, world_size
        self.workers = default_workers() if workers is None else workers
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1 / (255 * std)).to(self.device)
        self.shift = (-mean / std).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def plan(self):
        return epoch_plan(len(self.split), self.seed, self.epoch, self.shuffle, self.crop, self.pad)

    def keys(self) -> list[list]:
        """This rank's keys of each batch of the epoch."""
        order, params, flips = self.plan()
        out = []
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            out.append([(i, self.crop, params[i].tolist() if params is not None else None,
                         bool(flips[i]) if flips is not None else False) for i in idx.tolist()])
        return out

    def __iter__(self):
        loader = DataLoader(Keyed(self.split, self.pad), batch_sampler=self.keys(), num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=_one_thread if self.workers else None,
                            prefetch_factor=4 if self.workers else None)
        for x, idx in loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = torch.addcmul(self.shift, x.to(torch.float32), self.scale).to(self.dtype)
            yield x, self.y[idx.to(self.device)]
