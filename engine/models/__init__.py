"""The model registry: `build(name, num_classes, in_channels=3, **options) -> nn.Module`.

A model name (e.g. "wrn-28-10", "densenet-bc-90-60-depth2") is parsed by `engine.catalog`,
which has no torch so that configs can be checked anywhere; the catalog gives the family and the
options written in the name, and `BUILDERS[family]` makes the module. A family's builder is
called as `builder(num_classes=..., in_channels=..., **options)` for image models and
`builder(num_classes=..., **options)` for language models (num_classes = vocabulary size).
Its keyword arguments are the family's options: options from the name and from the config are
merged, and an option the builder does not take is refused naming the model and the option.

Families live in their own modules and register here: `cnn.py` (cnn-small), `resnet.py`
(wrn, preact-resnet, and the paper's Table 5 BAN-ResNets), `densenet.py` (densenet-bc and the
Table 4 students). Language models (`lm.py`) keep their own `BUILDERS` dict, merged below.

Every image model has `.stem` (its first convolution) and `.head` (its final nn.Linear, run in
float32 by `fp32_head` whatever the precision), and ends in global average pooling, so it takes any input size (1x8x8 digits, 3x32x32 CIFAR);
`engine.models.inherit.inherit` copies those two parts from a teacher (paper Tables 3-5).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from engine import catalog

BUILDERS: dict = {}   # catalog family -> builder(num_classes, [in_channels,] **options) -> nn.Module


def register(family: str):
    """Decorator: make `fn` the builder of a catalog family (one builder per family)."""
    def add(fn):
        if family in BUILDERS:
            raise ValueError(f"model family {family!r} already has a builder ({BUILDERS[family].__name__})")
        BUILDERS[family] = fn
        return fn
    return add


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


def _options(name: str, builder, from_name: dict, options: dict, fixed: tuple) -> dict:
    """Name options merged with keyword options; a clash or an unknown option is an error."""
    for k, v in options.items():
        if k in from_name and v != from_name[k]:
            raise ValueError(f"model {name!r}: its name sets {k}={from_name[k]!r}, found option {k}={v!r}")
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    known = [k for k, p in params.items() if k not in fixed and p.kind is not p.VAR_KEYWORD]
    for k in options:
        if k in fixed or (k not in known and not takes_any):
            raise TypeError(f"model {name!r}: unknown option {k!r}; expected one of: "
                            f"{', '.join(k for k in known if k not in from_name) or '(none)'}")
    return {**from_name, **options}


def build(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """The module for a registry name; `.model_name` remembers the name (used in messages)."""
    try:
        fam, from_name = catalog.resolve_model(name)
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}") from None
    if fam.family not in BUILDERS:
        raise KeyError(f"model {name!r}: family {fam.family!r} has no builder in engine.models")
    builder = BUILDERS[fam.family]
    fixed = ("num_classes", "in_channels")
    opts = _options(name, builder, from_name, options, fixed)
    sizes = dict(num_classes=num_classes, in_channels=in_channels) if fam.kind == "image" else dict(num_classes=num_classes)
    try:
        model = builder(**sizes, **opts)
    except ValueError as e:  # the builder says what is wrong; say which model
        raise ValueError(f"model {name!r}: {e}") from e
    model.model_name = name
    return model


def names() -> list[str]:
    """The example names of every family that has a builder (what `ban models` lists)."""
    return [n for fam in catalog.FAMILIES if fam.family in BUILDERS for n in fam.examples]


def count_params(module: nn.Module) -> int:
    """All parameters, frozen or not (the paper's counts)."""
    return sum(p.numel() for p in module.parameters())


def param_count(name: str, num_classes: int, in_channels: int = 3, **options) -> int:
    """count_params of a model built on the meta device: no memory, no time, any size."""
    with torch.device("meta"):
        return count_params(build(name, num_classes, in_channels, **options))


# The paper's parameter counts live torch-free in engine.param_counts (`ban models` reads them
# without torch); kept here under their old names.
from engine.param_counts import PAPER_NUM_CLASSES, PAPER_PARAMS  # noqa: E402,F401

# The families register themselves on import (they use `register` and `he_init` from above).
from engine.models import airbench, cnn, densenet, resnet  # noqa: E402,F401

from engine.models import lm  # noqa: E402  (language models keep their own table of builders)

for _family, _builder in lm.BUILDERS.items():
    register(_family)(_builder)
