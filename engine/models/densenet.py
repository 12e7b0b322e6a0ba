"""DenseNet-BC (Huang et al. 2017) for CIFAR, and the paper's Table 4 students.

densenet-bc-<depth>-<growth>: a 3x3 stem conv to 2*growth channels, then 3 dense blocks joined
by transitions (BN-ReLU-conv1x1 to floor(compression * channels), 2x2 average pooling), then
BN-ReLU, global average pooling and the linear head. A bottleneck layer is BN-ReLU-conv1x1
(4*growth)-BN-ReLU-conv3x3(growth), its output concatenated to its input. Option: compression
(default 0.5), dropout after each 3x3 conv (default 0).

Block layout: n = (depth - 4) // 6 bottleneck layers in every block. Where depth - 4 is not a
multiple of 6 (90-60, 80-80, 80-120) the remainder is dropped, so densenet-bc-90-60 has
blocks of 14 layers (88 weighted layers): the paper's Table 5 names its DenseNet-90-60 mirror
"Pre-ResNet-14" (14 units per block), and its Table 5 parameter counts fit a teacher whose block
outputs are 960, 1320, 1500 channels (14 layers of 60) to within 1% (see resnet.py); spreading
the remaining layers over the blocks instead would put those 5% off.

Parameter counts, 100 classes (ours with this layout, the paper's Table 2):
    densenet-bc-112-33   6.99 M   paper 6.3 M   (+11%)   blocks 18, 18, 18
    densenet-bc-90-60   15.19 M   paper 16.1 M  (-5.7%)  blocks 14, 14, 14
    densenet-bc-80-80   21.10 M   paper 22.4 M  (-5.8%)  blocks 12, 12, 12
    densenet-bc-80-120  47.28 M   paper 50.4 M  (-6.2%)  blocks 12, 12, 12
No layout of DenseNet-BC as Huang et al. describe it gives all four paper counts: 112-33 has a
whole 6n+4 depth (18 layers per block, nothing to choose) and is still 11% above the paper, while
the other three sit 6% below (the paper's 80-120 / 80-80 ratio, 2.25, is ours too: 2.24), so the
paper's implementation differs in something it does not report.

Table 4 students (registry names densenet-bc-<depth>-<growth>-depth<f> / -comp<f>, family
"densenet-bc-match"): DenseNets that keep the named teacher's widths at every transition, and its
stem and final widths, so stem and head fit the teacher's (issue 9, `inherit`). Only the inside of
each block changes; a block's layers share its channel gain as evenly as whole numbers allow (the
growth of layers differs by at most one).
  - depth<f> (0.5, 2, 3, 4): round(f * n) layers per block; the growth changes to keep the widths.
  - comp<f> (0.5, 0.75, 1.5): the paper's "compression" read as 1/theta, the factor by which a
    transition shrinks its input (2 in the teacher): a transition's input becomes f * 2 times
    its output (block outputs 480, 660 for comp0.5; 720, 990 for comp0.75; 1440, 1980 for comp1.5,
    against the teacher's 960, 1320), the layer count stays and the growth follows.
Counts, 100 classes, teacher densenet-bc-90-60 (ours 15.19 M, paper 16.1 M):
    depth0.5 20.29 M (paper 21.2)   depth2 12.69 (13.7)   depth3 11.90 (12.9)   depth4 11.55 (12.6)
    comp0.5   7.47 M (paper 5.1)    comp0.75 10.59 (10.1)  comp1.5 28.81 (80.5)
The depth rows sit the same ~1 M below the paper as the teacher does. The paper does not say how
its compression students are built; our reading keeps their order (two smaller students, one
larger) but not their sizes; none of the readings we tried that keep the transition widths
(theta or 1/theta scaled, growth or layer count adjusted) comes near 80.5 M.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models.common import check_dropout, check_width, fp32_head, he_init
from engine.models.registry import register


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4g)-BN-ReLU-conv3x3(g); returns [input, new g channels]."""

    def __init__(self, in_channels: int, growth: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.dropout = dropout

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([x, F.dropout(y, self.dropout, self.training)], 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """A DenseNet given explicitly: `growths[b]` lists the growth of each layer of block b,
    `transitions[b]` the width out of the transition after block b (one fewer than blocks)."""

    def __init__(self, in_channels: int, num_classes: int, stem_width: int, growths: list[list[int]],
                 transitions: list[int], dropout: float = 0.0):
        super().__init__()
        assert len(transitions) == len(growths) - 1
        self.stem = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        layers, c = [], stem_width
        for b, block in enumerate(growths):
            for g in block:
                layers.append(DenseLayer(c, g, dropout))
                c += g
            if b < len(transitions):
                layers.append(Transition(c, transitions[b]))
                c = transitions[b]
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)
        he_init(self)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return fp32_head(self.head, F.adaptive_avg_pool2d(x, 1).flatten(1))


def densenet_bc_layout(depth: int, growth: int, compression: float = 0.5):
    """(stem width, growths per block, transition widths, block output widths) of
    DenseNet-BC-depth-growth: 3 blocks of (depth - 4) // 6 layers (see the module docstring)."""
    n = (depth - 4) // 6
    if n < 1 or growth < 1:
        raise ValueError(f"expected depth >= 10 and growth >= 1 (6n+4 layers, n per block), found depth {depth}, growth {growth}")
    stem = 2 * growth
    growths, transitions, outs, c = [], [], [], stem
    for b in range(3):
        growths.append([growth] * n)
        c += n * growth
        outs.append(c)
        if b < 2:
            c = int(c * compression)
            transitions.append(c)
    return stem, growths, transitions, outs


def even_split(total: int, parts: int) -> list[int]:
    """`total` as `parts` whole numbers differing by at most one, larger first."""
    q, r = divmod(total, parts)
    return [q + 1] * r + [q] * (parts - r)


@register("densenet-bc")
def build_densenet_bc(num_classes, in_channels, depth, growth, compression=0.5, dropout=0.0):
    compression = check_width(compression, "compression")
    if compression > 1:
        raise ValueError(f"expected option compression in (0, 1], found {compression}")
    stem, growths, transitions, _ = densenet_bc_layout(depth, growth, compression)
    return DenseNet(in_channels, num_classes, stem, growths, transitions, check_dropout(dropout))


@register("densenet-bc-match")
def build_densenet_bc_match(num_classes, in_channels, depth, growth, depth_factor=1, compression_factor=1,
                            dropout=0.0):
    """A Table 4 student of teacher densenet-bc-<depth>-<growth> (see the module docstring)."""
    depth_factor = check_width(depth_factor, "depth_factor")
    compression_factor = check_width(compression_factor, "compression_factor")
    stem, growths, transitions, outs = densenet_bc_layout(depth, growth)
    ins = [stem] + transitions
    # teacher compression 0.5 = 1/2; the student's transitions shrink by 2 * compression_factor
    outs = [round(t * 2 * compression_factor) for t in transitions] + [outs[-1]]
    new_growths = []
    for b, (c_in, c_out) in enumerate(zip(ins, outs)):
        n = max(1, round(len(growths[b]) * depth_factor))
        if c_out - c_in < n:
            raise ValueError(f"block {b + 1} would need {n} layers to grow {c_in} -> {c_out} channels; "
                             f"expected a larger compression_factor or a smaller depth_factor, "
                             f"found compression_factor {compression_factor}, depth_factor {depth_factor}")
        new_growths.append(even_split(c_out - c_in, n))
    return DenseNet(in_channels, num_classes, stem, new_growths, transitions, check_dropout(dropout))
