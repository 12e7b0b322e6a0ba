"""The table of builders (catalog family -> builder) that the families fill with `register`, and
`build` / `names` / `param_count` over it. The families register when engine.models (the package)
imports them; this module imports none of them, nor the package."""
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
    """The module for a registry name or a reference (`pkg.module:factory`, `timm:NAME`,
    `torchvision:NAME`: engine/models/reference.py); `.model_name` remembers the name (used in messages)."""
    if catalog.parse_reference(name):
        from engine.models import reference
        model = reference.build(name, num_classes, in_channels, **options)
        model.model_name = name
        return model
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
