"""Inheriting a teacher's stem and head (paper Tables 3-5, issue 9).

The paper's BAN-ResNets "share the first and last layer with the teacher". `inherit` copies
those parts by value (a state_dict copy: later training of either model leaves the other's
untouched) and can freeze them: a frozen part gets requires_grad=False, and the training loop
builds its optimizer from the parameters that still require grad, so neither the gradient nor
weight decay ever moves a frozen part.
"""
from __future__ import annotations

import torch.nn as nn

PARTS = ("stem", "head")


def _label(model: nn.Module) -> str:
    name = getattr(model, "model_name", None)
    return f"{name!r} ({type(model).__name__})" if name else type(model).__name__


def module(model: nn.Module, path: str, part: str) -> nn.Module:
    """The submodule at `path`; ValueError naming the model and its top-level modules if none."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        top = ", ".join(n for n, _ in model.named_children())
        raise ValueError(f"parts.{part}: the {part} of {_label(model)} is the module path {path!r}, which it does not "
                         f"have (set parts = {{ {part} = \"...\" }}; its top-level modules: {top})") from None


def inherit(student: nn.Module, teacher: nn.Module, parts: list[str], freeze: list[str] = (),
            paths: dict | None = None, teacher_paths: dict | None = None) -> nn.Module:
    """Copy `parts` (of "stem", "head") from teacher into student, then freeze `freeze` (a subset
    of `parts`). ValueError, naming both models, the layer and both shapes, if a part does not fit.
    `paths` maps a part to its module path in both models (a reference model's
    `parts = { stem = "conv1", head = "fc" }`; `teacher_paths` the teacher's, by default the same); by
    default a part is the attribute of its name."""
    paths = paths or {}
    teacher_paths = paths if teacher_paths is None else teacher_paths
    for part in list(parts) + list(freeze):
        if part not in PARTS:
            raise ValueError(f"inherit: expected parts among {', '.join(PARTS)}, found {part!r}")
    for part in freeze:
        if part not in parts:
            raise ValueError(f"inherit: expected frozen parts to be inherited too, found {part!r} not in {list(parts)}")
    for part in parts:
        src, dst = module(teacher, teacher_paths.get(part, part), part), module(student, paths.get(part, part), part)
        src_state, dst_state = src.state_dict(), dst.state_dict()
        for key in dict.fromkeys([*src_state, *dst_state]):   # in layer order
            a, b = src_state.get(key), dst_state.get(key)
            if a is None or b is None or a.shape != b.shape:
                shape = lambda t: "missing" if t is None else f"shape {list(t.shape)}"  # noqa: E731
                raise ValueError(f"cannot inherit the {part} of teacher {_label(teacher)} into student "
                                 f"{_label(student)}: {part}.{key} has {shape(a)} in the teacher and "
                                 f"{shape(b)} in the student")
        dst.load_state_dict(src_state)
    for part in freeze:
        for p in module(student, paths.get(part, part), part).parameters():
            p.requires_grad_(False)
    return student
