"""Models by reference (issue 24): `pkg.module:factory`, `timm:NAME`, `torchvision:NAME`.

`build(name, num_classes, in_channels, **options)` resolves the reference (engine.catalog
parses it, without torch) and calls it: a factory with `options` as keyword arguments, plus
`num_classes` and `in_channels` where its signature takes them (or takes **kwargs); timm's
`create_model(NAME, num_classes=, in_chans=, pretrained=False, **options)`; torchvision's
`get_model(NAME, weights=None, num_classes=, **options)` (torchvision's models take 3 channels).
Every failure (the import, the factory's own exception, a result that is not an nn.Module) is a
ValueError naming the reference and the underlying message, which the engine turns into a
config error (exit 2).

`ban validate` builds them on the meta device through `python -m engine check` (engine/check.py).
"""
from __future__ import annotations

import importlib
import inspect

import torch
import torch.nn as nn

from engine import catalog


def _missing(exc: ImportError, hub: str) -> str:
    package, pip = catalog.EXTRAS[hub]
    return f"{package} is not installed ({pip})" if getattr(exc, "name", None) == package else str(exc)


def resolve(name: str):
    """The callable a reference names, and the keyword arguments the trainer's sizes go by."""
    kind, module, attr = catalog.parse_reference(name)
    if kind == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ValueError(f"model {name!r}: {_missing(exc, 'timm')}") from None
        if attr not in timm.list_models():
            raise ValueError(f"model {name!r}: timm {timm.__version__} has no model {attr!r} (timm.list_models() lists them)")
        return lambda **kw: timm.create_model(attr, **{"pretrained": False, **kw}), {"in_channels": "in_chans"}
    if kind == "torchvision":
        import torchvision.models as tvm
        if attr not in tvm.list_models():
            raise ValueError(f"model {name!r}: torchvision has no model {attr!r} (torchvision.models.list_models() lists them)")
        return lambda **kw: tvm.get_model(attr, **{"weights": None, **kw}), {"in_channels": None}
    try:
        obj = importlib.import_module(module)
    except Exception as exc:   # noqa: BLE001 - whatever the user's module raises on import, say it
        raise ValueError(f"model {name!r}: cannot import {module!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {name!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {name!r}: expected a callable returning an nn.Module, found {type(obj).__name__}")
    return obj, {}


def size_arguments(factory, num_classes: int, in_channels: int, renamed: dict) -> dict:
    """num_classes and in_channels under the names the factory takes them by, where it takes them."""
    wanted = {"num_classes": num_classes, "in_channels": in_channels}
    if renamed:   # timm / torchvision: their own names, always passed
        return {renamed.get(k, k): v for k, v in wanted.items() if renamed.get(k, k) is not None}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):   # a builtin without a signature: pass nothing
        return {}
    any_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in wanted.items() if k in params or any_kw}


def build(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """The module a reference names, for `num_classes` classes and `in_channels` channels."""
    factory, renamed = resolve(name)
    sizes = size_arguments(factory, num_classes, in_channels, renamed)
    clash = sorted(set(options) & {"num_classes", "in_channels", "in_chans"})
    if clash:
        raise ValueError(f"model {name!r}: model_options may not set {', '.join(clash)} (the data set gives it)")
    try:
        model = factory(**sizes, **options)
    except Exception as exc:   # noqa: BLE001 - the factory's own error is the message
        raise ValueError(f"model {name!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r}: expected the factory to return an nn.Module, found {type(model).__name__}")
    return model
