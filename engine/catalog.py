"""Names of models, data sets and objectives, without torch.

The config validator (used by the CLI and the TUI) must check names without importing torch,
so the names live here and the torch registries (`engine.models`, `engine.data`,
`engine.objectives`) dispatch on them. A test checks that both sides agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OBJECTIVES = ("ce", "ban", "ban+l", "cwtm", "dkpp")
DATASETS = ("digits", "cifar10", "cifar100", "npz", "ptb")
LM_DATASETS = ("ptb",)


@dataclass(frozen=True)
class ModelFamily:
    family: str          # key into engine.models' builders
    pattern: str         # full-match regex over the model name; named groups become options
    kind: str            # "image" or "lm"
    examples: tuple      # names shown by `ban models` and used for "did you mean"
    doc: str


def _int(d):
    return {k: (float(v) if "." in v else int(v)) for k, v in d.items() if v is not None}


FAMILIES: list[ModelFamily] = [
    ModelFamily("cnn-small", r"cnn-small", "image", ("cnn-small",),
                "small CNN for 8x8 digits and quick CPU runs"),
    ModelFamily("wrn", r"wrn-(?P<depth>\d+)-(?P<width>\d+)", "image",
                ("wrn-28-1", "wrn-28-2", "wrn-28-5", "wrn-28-10", "wrn-16-2"),
                "Wide-ResNet-depth-k (Zagoruyko & Komodakis)"),
    ModelFamily("densenet-bc", r"densenet-bc-(?P<depth>\d+)-(?P<growth>\d+)", "image",
                ("densenet-bc-112-33", "densenet-bc-90-60", "densenet-bc-80-80", "densenet-bc-80-120"),
                "DenseNet-BC-depth-growth (Huang et al.), compression 0.5"),
    ModelFamily("preact-resnet", r"preact-resnet-(?P<depth>\d+)", "image",
                ("preact-resnet-18", "preact-resnet-20", "preact-resnet-56"),
                "pre-activation ResNet (He et al. 2016)"),
]


def resolve_model(name: str) -> tuple[ModelFamily, dict]:
    """(family, options parsed from the name); KeyError with a clear message if unknown."""
    if isinstance(name, str):
        for fam in FAMILIES:
            m = re.fullmatch(fam.pattern, name)
            if m:
                return fam, _int(m.groupdict())
    raise KeyError(f"unknown model {name!r}")


def model_examples() -> list[str]:
    return [n for fam in FAMILIES for n in fam.examples]
