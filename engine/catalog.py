"""Names of models, data sets and objectives, without torch.

The config validator (used by the CLI and the TUI) must check names without importing torch,
so the names live here and the torch registries (`engine.models`, `engine.data`,
`engine.objectives`) dispatch on them. A test checks that both sides agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OBJECTIVES = ("ce", "ban", "ban+l", "cwtm", "dkpp", "ls")
# Options a config may set per objective (dkpp's generator is supplied by the training loop).
OBJECTIVE_OPTIONS = {"ce": (), "ban": ("temperature",), "ban+l": ("temperature", "teacher_weight", "label_weight"),
                     "cwtm": (), "dkpp": (), "ls": ("smoothing",)}
# Objectives with no teacher term (a generation training by one needs no teacher).
TEACHERLESS = ("ce", "ls")
# `control = "independent"` on experiment X adds experiment X+ce: the same chain with every
# generation trained by plain `ce` without a teacher (k independent models from k seeds).
CONTROLS = ("independent",)
CONTROL_SUFFIX = "+ce"
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
    # Paper Tables 4-5 (issue 9): students that keep a DenseNet-BC teacher's stem and head widths.
    ModelFamily("densenet-bc-match", r"densenet-bc-(?P<depth>\d+)-(?P<growth>\d+)-(?:depth(?P<depth_factor>\d+(?:\.\d+)?)"
                r"|comp(?P<compression_factor>\d+(?:\.\d+)?))", "image",
                tuple(f"densenet-bc-90-60-{v}" for v in ("depth0.5", "depth2", "depth3", "depth4",
                                                         "comp0.5", "comp0.75", "comp1.5")),
                "Table 4 student of densenet-bc-D-G: depth or compression x f, teacher's transition widths"),
    ModelFamily("ban-wrn", r"ban-wrn-(?P<units>\d+)-(?P<ratio>\d+(?:\.\d+)?)", "image",
                ("ban-wrn-1-1", "ban-wrn-2-1", "ban-wrn-4-0.5", "ban-wrn-4-1"),
                "Table 5 Wide-ResNet-units-ratio mirroring a DenseNet teacher (option teacher)"),
    ModelFamily("ban-preresnet", r"ban-preresnet-(?P<units>\d+)-(?P<ratio>\d+(?:\.\d+)?)", "image",
                ("ban-preresnet-14-0.5", "ban-preresnet-14-1"),
                "Table 5 bottleneck Pre-ResNet-units-ratio mirroring a DenseNet teacher (option teacher)"),
    # the cifar10-fast preset (issue 7): engine/models/airbench.py
    ModelFamily("airbench", r"airbench", "image", ("airbench",),
                "airbench94-style fast CIFAR-10 net (Keller Jordan): 3 conv blocks 64/256/256, 2.0 M; option width"),
    # language models (engine/models/lm.py)
    ModelFamily("lstm", r"lstm-(?P<layers>\d+)x(?P<hidden>\d+)", "lm",
                ("lstm-2x200", "lstm-2x650", "lstm-2x1500"),
                "word LSTM LM, layers x units (Zaremba et al. 2014; dropout 0/0.5/0.65 for 200/650/1500)"),
    ModelFamily("lstm-tied", r"lstm-tied-(?P<layers>\d+)x(?P<hidden>\d+)", "lm", ("lstm-tied-2x1500",),
                "word LSTM LM with tied input/output embeddings (2x1500: the BAN paper's 52 M PTB model)"),
    ModelFamily("char-cnn-lstm", r"char-cnn-lstm-(?P<layers>\d+)x(?P<hidden>\d+)", "lm",
                ("char-cnn-lstm-2x650", "char-cnn-lstm-2x300"),
                "character-aware CNN-LSTM LM (Kim et al. 2016): 2x650 large (19 M), 2x300 small"),
]


# What `model_options` may set, per family: the keyword arguments of the family's builder in
# engine.models (for the language models, of the module its builder passes **options to), less
# the sizes the trainer supplies (num_classes, in_channels, vocab). tests/test_catalog.py checks
# that they agree with the builders' signatures.
MODEL_OPTIONS = {
    "cnn-small": ("width", "dropout"),
    "wrn": ("depth", "width", "dropout"),
    "densenet-bc": ("depth", "growth", "compression", "dropout"),
    "preact-resnet": ("depth", "width", "dropout"),
    "densenet-bc-match": ("depth", "growth", "depth_factor", "compression_factor", "dropout"),
    "ban-wrn": ("units", "ratio", "teacher", "dropout"),
    "ban-preresnet": ("units", "ratio", "teacher"),
    "airbench": ("width",),
    "lstm": ("layers", "hidden", "tied", "dropout", "init_range"),
    "lstm-tied": ("layers", "hidden", "dropout", "init_range"),
    "char-cnn-lstm": ("layers", "hidden", "char_embed", "widths", "filters_per_width", "max_filters",
                      "highway", "dropout", "max_word_len", "init_range"),
}


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
