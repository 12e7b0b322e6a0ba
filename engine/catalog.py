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
DATASETS = ("digits", "cifar10", "cifar100", "npz", "ptb", "imagefolder", "hf")
# Data sets read from the user's files at any image size (issue 24; `torchvision:NAME` too):
# held in memory when they fit, else streamed (engine/data/streamed.py).
FILE_DATASETS = ("imagefolder", "hf")
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


# ---- models by reference (issue 24): your own nn.Module, timm's, torchvision's --------------
# `model = "pkg.module:factory"` names any importable callable returning an nn.Module (its
# keyword arguments are `model_options`; num_classes and in_channels are passed when its
# signature takes them); `timm:NAME` is timm.create_model(NAME, ...) and `torchvision:NAME`
# torchvision.models.get_model(NAME, ...). They are image models. engine/models/reference.py
# builds them; this part is torch-free so that configs are checked anywhere.
REFERENCE_FORMS = (
    ("pkg.module:factory", "your own nn.Module: any importable callable (model_options are its keyword arguments)"),
    ("timm:NAME", "timm.create_model(NAME, pretrained=false, ...); needs the extra: pip install 'ban[timm]'"),
    ("torchvision:NAME", "torchvision.models.get_model(NAME, weights=None, ...), e.g. torchvision:resnet18"),
)
# The package a reference form needs, and the pip command that installs it.
EXTRAS = {"timm": ("timm", "pip install 'ban[timm]'"), "torchvision": ("torchvision", "pip install torchvision"),
          "hf": ("datasets", "pip install 'ban[hf]'")}
_IDENT = r"[A-Za-z_]\w*"
_IMPORT_PATH = re.compile(rf"(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<attr>{_IDENT}(?:\.{_IDENT})*)")
_HUB_NAME = re.compile(r"(?P<hub>timm|torchvision):(?P<name>[\w.\-]+)")
# Modules a reference's parts (`parts = { stem = "conv1", head = "fc" }`) may name, as module paths.
REFERENCE_PARTS = ("stem", "head")


def parse_reference(name) -> tuple[str, str, str] | None:
    """("timm" | "torchvision" | "import", module or hub, attribute or model name) for a model
    reference, None for anything else (a registry name or not a string)."""
    if not isinstance(name, str):
        return None
    if m := _HUB_NAME.fullmatch(name):
        return m["hub"], m["hub"], m["name"]
    if m := _IMPORT_PATH.fullmatch(name):
        return "import", m["module"], m["attr"]
    return None


def reference_versions(name: str) -> dict:
    """What a reference resolves to here, without importing it: the top-level package, its
    installed version (None when it is not from an installed distribution) and where it lives.
    A run records this so a resume elsewhere can say why it cannot rebuild the same model."""
    import importlib.metadata
    import importlib.util
    kind, module, _ = parse_reference(name)
    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    version = None
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"reference": name, "package": top, "version": version,
            "origin": getattr(found, "origin", None) if found else None}
