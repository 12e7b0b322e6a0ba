"""`python -m engine check CONFIG`: what `ban validate` and `ban run` cannot check without torch.

For every experiment that names a model by reference (`pkg.module:factory`, `timm:NAME`,
`torchvision:NAME`), gives a `parts` table or uses a data set that is read from files of the
user's (imagefolder, torchvision:NAME, hf): the data set is described (class count, channels,
image size; an ImageFolder with no classes or an unreadable image is a problem), then each
model with a reference or parts is built on the meta device and run on one dummy batch (`probe`): an import path that does not import, a factory that raises or returns no nn.Module,
an output width other than the class count, a part path the model lacks. One line per problem
on stderr as `file:line: key: message`, exit 2; nothing is trained and nothing is written.
"""
from __future__ import annotations

import sys

from engine import catalog, spec

EXIT_CONFIG = 2


def needs_check(exp: spec.Experiment) -> bool:
    """Whether the experiment has anything only torch can check (torch-free: the CLI asks)."""
    return (exp.dataset.name in catalog.FILE_DATASETS or exp.dataset.name.startswith("torchvision:")
            or any(catalog.parse_reference(g.model) or g.parts for g in exp.generations))


def raw_index(doc: dict, name: str) -> int | None:
    """The [[experiment]] table an experiment (or a sweep cell or control of it) came from."""
    names = [e.get("name") if isinstance(e, dict) else None for e in doc.get("experiment", [])]
    if name in names:
        return names.index(name)
    starts = [i for i, n in enumerate(names) if isinstance(n, str) and name.startswith(n)]
    return max(starts, key=lambda i: len(names[i])) if starts else None


def model_path(doc: dict, i: int | None, gen: spec.Generation) -> tuple:
    """The key path where generation `gen`'s model is written."""
    if i is None:
        return ("experiment",)
    raw = doc["experiment"][i]
    tables = raw.get("generation") or []
    if gen.index < len(tables) and isinstance(tables[gen.index], dict) and "model" in tables[gen.index]:
        return ("experiment", i, "generation", gen.index, "model")
    return ("experiment", i, "model") if "model" in raw else ("defaults", "model")


def problems(path: str) -> list[spec.Problem]:
    """Every problem of the config that the torch side finds (the spec's own problems first)."""
    from engine.data import DataError, describe
    from engine.spec.checks import tomllib
    from engine.spec.loading import decode
    with open(path, "rb") as f:
        text = decode(path, f.read())
    config = spec.loads(text, path)
    doc, loc = tomllib.loads(text), spec.Locator(text)
    found, seen = [], set()

    def bad(key_path, message):
        line, col = loc.find(key_path)
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in key_path).replace(".[", "[")
        p = spec.Problem(path, line, col, key, message)
        if str(p) not in seen:
            seen.add(str(p))
            found.append(p)

    for exp in config.experiments.values():
        if not needs_check(exp):
            continue
        i = raw_index(doc, exp.name)
        try:
            shape = describe(exp.dataset)
        except (DataError, OSError, ValueError) as exc:
            where = ("experiment", i, "dataset") if i is not None and "dataset" in doc["experiment"][i] else ("defaults", "dataset")
            bad(where, " ".join(str(exc).split()))
            continue
        for g in exp.generations:
            if not (catalog.parse_reference(g.model) or g.parts):
                continue
            try:
                probe(g.model, g.model_options, shape.num_classes, shape.in_channels, shape.image_size, g.parts)
            except (ValueError, TypeError, KeyError) as exc:
                msg = exc.args[0] if exc.args else str(exc)
                bad(model_path(doc, i, g), " ".join(str(msg).split()))
    return found


def probe(name: str, options: dict, num_classes: int, in_channels: int, image_size: tuple, parts: dict | None) -> None:
    """Build the model on the meta device (no memory, no weights), check its `parts` paths and, for a
    reference, run one dummy batch and check the output width. ValueError with the message `ban validate` prints."""
    import torch
    from engine.models import build
    from engine.models.inherit import module
    ref = catalog.parse_reference(name)
    if ref and ref[0] == "torchvision" and in_channels != 3:
        raise ValueError(f"model {name!r}: torchvision's models take 3-channel images, the data set has {in_channels}")
    with torch.device("meta"):
        model = build(name, num_classes, in_channels, **options)
        for part, path in (parts or {}).items():
            module(model, path, part)
        if ref is None:   # a registry model: its head is built for num_classes (and some of its ops have no meta kernel)
            return
        try:
            out = model.eval()(torch.zeros(2, in_channels, *image_size))
        except Exception as exc:   # noqa: BLE001 - the model's own error is the message
            raise ValueError(f"model {name!r}: a forward pass of a [2, {in_channels}, {image_size[0]}, "
                             f"{image_size[1]}] batch raised {type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {name!r}: expected outputs of shape [batch, {num_classes}] (the data set's "
                         f"classes), found {shape}")


def main(path: str) -> int:
    try:
        found = problems(path)
    except spec.SpecError as exc:
        found = exc.problems
    for p in found:
        print(str(p), file=sys.stderr)
    return EXIT_CONFIG if found else 0
