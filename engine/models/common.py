"""What every model family builds with: He initialisation, a float32 head under autocast, and
the checks of the options most families take (dropout, width). Imports nothing of engine.models."""
from __future__ import annotations

import torch
import torch.nn as nn


def he_init(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan_out, as in the ResNet/WRN/DenseNet papers), BN = identity,
    zero biases. Every image model calls it at the end of its constructor."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def fp32_head(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """head(x) in float32 under any autocast: the logits, and so every softmax of them (the
    teacher's soft targets, the ensembles' probabilities), keep fp32's resolution; a bf16 logit
    has 8 bits of mantissa, which quantises the small wrong-class probabilities BAN transfers.
    Every model's forward ends with it (image models and language models alike)."""
    with torch.autocast(x.device.type, enabled=False):
        return head(x.float())


def check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"expected option dropout in [0, 1), found {dropout!r}")
    return float(dropout)


def check_width(width, key: str = "width") -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"expected option {key} > 0, found {width!r}")
    return float(width)
