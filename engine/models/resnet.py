"""Pre-activation residual networks: Wide-ResNets, pre-act ResNets and the paper's BAN-ResNets.

One `ResNet` class: a 3x3 stem conv, stages of pre-activation units (the first unit of every
stage after the first halves the resolution), BN-ReLU, an optional 1x1 "match" conv, global
average pooling and the linear head. Units (He et al. 2016, "Identity mappings"):
  - `PreActBlock`: BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, plus the input (a 1x1 conv of the
    pre-activated input where the width or resolution changes).
  - `PreActBottleneck`: BN-ReLU-conv1x1(m)-BN-ReLU-conv3x3(m)-BN-ReLU-conv1x1(out), same shortcut.

Families:
  - wrn-<depth>-<k> (Zagoruyko & Komodakis 2016): depth 6n+4, stem 16, stages 16k, 32k, 64k of
    n basic units; option dropout (default 0). 10 classes: wrn-28-1 0.37 M (paper 0.38),
    wrn-28-2 1.47 M (1.48), wrn-28-5 9.13 M (9.16), wrn-28-10 36.48 M (36).
  - preact-resnet-<depth>: CIFAR layout for depth 6n+2 (stem 16, stages 16, 32, 64 of n basic
    units: 20, 32, 56, 110, ...); depth 18 and 34 use the ImageNet stage layouts [2,2,2,2] and
    [3,4,6,3] at 64, 128, 256, 512 with a 3x3 stem and no max-pool (the usual CIFAR adaptation).
    Options: width (multiplies every width, default 1), dropout.
  - Table 5 BAN-ResNets, residual students that mirror a DenseNet-BC teacher block by block and
    share its stem and head (option teacher, default "densenet-bc-90-60"; dropout). Stage b has
    the width of the teacher's block b output after compression (the transition's width; for the
    last block half its output): 480, 660, 750 for DenseNet-90-60. The stem has the teacher's
    stem width (120), and a 1x1 match conv (BN-ReLU after it) brings the last stage to the
    teacher's final width (1500) so the teacher's head fits.
      ban-wrn-<units>-<ratio>: <units> basic units per stage, stage widths times <ratio>.
      ban-preresnet-<units>-<ratio>: <units> bottleneck units per stage at the stage widths, inner
        width ratio * width / 4.
    Paper name -> registry name, params with 100 classes (ours, paper):
      Pre-ResNet-14-0.5      ban-preresnet-14-0.5   8.88 M   7.3 M
      Pre-ResNet-14-1        ban-preresnet-14-1    20.45 M  17.7 M
      Wide-ResNet-1-1        ban-wrn-1-1           21.04 M  20.9 M
      Match-Wide-ResNet-2-1  ban-wrn-2-1           43.16 M  43.1 M
      Wide-ResNet-4-0.5      ban-wrn-4-0.5         22.40 M  24.3 M
      Wide-ResNet-4-1        ban-wrn-4-1           87.40 M  87.3 M
    The Wide-ResNet-*-1 rows agree to 1%, which is what fixes the stage widths above (a teacher
    with 15, 14, 14 layers per block would put them 5% off). The paper does not define its
    bottleneck units or the 0.5 ratio; ours (inner width = ratio * width / 4; ratio 0.5 halves a
    wide stage) land 8-22% off. The paper's "Match-" prefix marks the 1x1 match conv, which
    every student here has (the teacher's head needs its 1500 inputs).
"""
from __future__ import annotations

from functools import partial

import torch.nn as nn
import torch.nn.functional as F

from engine import catalog
from engine.models.common import check_dropout, check_width, fp32_head, he_init
from engine.models.registry import register
from engine.models.densenet import densenet_bc_layout


class PreActBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        y = self.conv1(a)
        y = self.conv2(F.dropout(F.relu(self.bn2(y)), self.dropout, self.training))
        return y + (x if self.shortcut is None else self.shortcut(a))


class PreActBottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, inner: int = 0):
        super().__init__()
        inner = inner or max(1, out_channels // 4)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(a))))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (x if self.shortcut is None else self.shortcut(a))


class ResNet(nn.Module):
    """`units[s]` units of `make_unit(in, out, stride)` at width `widths[s]` per stage s;
    `match_width`: a 1x1 conv to that width before pooling (to share a teacher's head)."""

    def __init__(self, in_channels: int, num_classes: int, stem_width: int, widths: list[int], units: list[int],
                 make_unit=PreActBlock, match_width: int | None = None):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        blocks, c = [], stem_width
        for s, (w, n) in enumerate(zip(widths, units)):
            for u in range(n):
                blocks.append(make_unit(c, w, 2 if s > 0 and u == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.match = None
        if match_width:
            self.match = nn.Sequential(nn.Conv2d(c, match_width, 1, bias=False), nn.BatchNorm2d(match_width))
            c = match_width
        self.head = nn.Linear(c, num_classes)
        he_init(self)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        if self.match is not None:
            x = F.relu(self.match(x))
        return fp32_head(self.head, F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("wrn")
def build_wrn(num_classes, in_channels, depth, width, dropout=0.0):
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"expected depth 6n+4 (10, 16, 22, 28, 40, ...), found {depth}")
    n = (depth - 4) // 6
    k = check_width(width)
    return ResNet(in_channels, num_classes, 16, [round(16 * k), round(32 * k), round(64 * k)], [n] * 3,
                  partial(PreActBlock, dropout=check_dropout(dropout)))


IMAGENET_UNITS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


@register("preact-resnet")
def build_preact_resnet(num_classes, in_channels, depth, width=1.0, dropout=0.0):
    k = check_width(width)
    unit = partial(PreActBlock, dropout=check_dropout(dropout))
    if depth in IMAGENET_UNITS:
        widths = [max(1, round(w * k)) for w in (64, 128, 256, 512)]
        return ResNet(in_channels, num_classes, widths[0], widths, IMAGENET_UNITS[depth], unit)
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"expected depth 6n+2 (8, 14, 20, 32, 44, 56, 110, ...) or 18 or 34, found {depth}")
    widths = [max(1, round(w * k)) for w in (16, 32, 64)]
    return ResNet(in_channels, num_classes, widths[0], widths, [(depth - 2) // 6] * 3, unit)


def check_units(units) -> int:
    if units < 1:
        raise ValueError(f"expected at least 1 unit per stage, found {units}")
    return units


def mirror_widths(teacher: str):
    """(stem width, stage widths, final width) of a BAN-ResNet mirroring a DenseNet-BC teacher."""
    try:
        fam, opts = catalog.resolve_model(teacher)
    except KeyError:
        fam = None
    if fam is None or fam.family != "densenet-bc":
        raise ValueError(f"expected option teacher to name a DenseNet-BC (e.g. 'densenet-bc-90-60'), found {teacher!r}")
    compression = 0.5
    stem, _, transitions, outs = densenet_bc_layout(opts["depth"], opts["growth"], compression)
    return stem, transitions + [int(outs[-1] * compression)], outs[-1]


@register("ban-wrn")
def build_ban_wrn(num_classes, in_channels, units, ratio, teacher="densenet-bc-90-60", dropout=0.0):
    stem, widths, final = mirror_widths(teacher)
    ratio = check_width(ratio, "ratio")
    return ResNet(in_channels, num_classes, stem, [max(1, round(w * ratio)) for w in widths], [check_units(units)] * 3,
                  partial(PreActBlock, dropout=check_dropout(dropout)), match_width=final)


@register("ban-preresnet")
def build_ban_preresnet(num_classes, in_channels, units, ratio, teacher="densenet-bc-90-60"):
    stem, widths, final = mirror_widths(teacher)
    ratio = check_width(ratio, "ratio")
    make_unit = lambda c, w, stride: PreActBottleneck(c, w, stride, inner=max(1, round(w * ratio / 4)))  # noqa: E731
    return ResNet(in_channels, num_classes, stem, widths, [check_units(units)] * 3, make_unit, match_width=final)
