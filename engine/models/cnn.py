"""cnn-small: a small, fast CNN for 8x8 digits and quick CPU runs (~43k parameters).

conv3x3(c) -> conv3x3(1.5c) -> conv3x3(2c, stride 2), each followed by BN and ReLU, then global
average pooling, dropout and a linear head; c = 32 * width. It reaches under 5% test error on
sklearn's digits in a few epochs (tests/test_models.py trains it).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from engine.models.common import check_dropout, check_width, fp32_head, he_init
from engine.models.registry import register


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        c1, c2, c3 = (max(1, round(32 * width * f)) for f in (1, 1.5, 2))
        self.stem = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
        )
        self.dropout = dropout
        self.head = nn.Linear(c3, num_classes)
        he_init(self)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.body(self.stem(x)), 1).flatten(1)
        return fp32_head(self.head, F.dropout(x, self.dropout, self.training))


@register("cnn-small")
def build_cnn_small(num_classes, in_channels, width=1.0, dropout=0.0):
    return SmallCNN(in_channels, num_classes, check_width(width), check_dropout(dropout))
