"""airbench: a small, fast CIFAR-10 network after Keller Jordan's cifar10-airbench (airbench94:
94% on CIFAR-10 in 3.83 s on an A100), the model of the `cifar10-fast` preset, so that a whole
BAN chain takes seconds to minutes on one GPU (~2.0 M parameters at width 1).

    stem:   conv 2x2, no padding, to 8 * in_channels channels (with bias), GELU
    blocks: widths 64w, 256w, 256w; each: conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU
    head:   global max pool, Linear without bias, logits x 1/9

What we keep of airbench94, and why: the layout above; GELU; max-pool downsampling inside each
block (the second conv runs at the lower resolution: cheap); BN with a fast running-average
momentum (0.4), so the statistics catch up within a short schedule; the head's 1/9 output scale
(small initial logits, a gentler start for a high learning rate); each 3x3 conv's first filters
start as the identity (Dirac init: an implicit residual, so the net starts close to shallow).
What we leave out: the whitening init of the stem (our builders see no data: here the stem is
learned like any conv), frozen BN scales and the 64x learning rate of BN biases (one optimizer
group for every model), label smoothing, lookahead/EMA, test-time augmentation and alternating
flips: the engine's training loop is the same for every model.

Any input size: a block pools only while its map is at least 2 pixels on a side, so 8x8 digits
go 7 -> 3 -> 1 -> 1 and CIFAR's 32x32 goes 31 -> 15 -> 7 -> 3 as in airbench.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from engine.models.common import check_width, fp32_head, he_init
from engine.models.registry import register

BN_MOMENTUM = 0.4    # PyTorch's convention: running = 0.6 * running + 0.4 * batch
LOGIT_SCALE = 1 / 9


class Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)

    def forward(self, x):
        x = self.conv1(x)
        if min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, 2)
        x = F.gelu(self.bn1(x))
        return F.gelu(self.bn2(self.conv2(x)))


class Airbench(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 256, 256)]
        self.stem = nn.Conv2d(in_channels, 2 * in_channels * 2 * 2, 2, bias=True)
        ins = [self.stem.out_channels] + widths[:-1]
        self.blocks = nn.Sequential(*[Block(i, o) for i, o in zip(ins, widths)])
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        he_init(self)
        for block in self.blocks:
            for conv in (block.conv1, block.conv2):
                w = conv.weight.data
                nn.init.dirac_(w[:w.shape[1]])   # the first in_channels filters pass their input through

    def forward(self, x):
        x = self.blocks(F.gelu(self.stem(x)))
        return fp32_head(self.head, x.amax(dim=(2, 3))) * LOGIT_SCALE


@register("airbench")
def build_airbench(num_classes, in_channels, width=1.0):
    return Airbench(in_channels, num_classes, check_width(width))
