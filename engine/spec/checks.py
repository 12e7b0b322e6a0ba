"""Validation of `experiments.toml` into `engine.spec` objects, every problem in one pass.

Each problem names the file, line and column, the key path, what was expected and what was
found, and a "did you mean" for misspelled keys and names. No torch, no textual.
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
import sys
from dataclasses import fields, replace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine import catalog
from engine.runs import check_name
from engine.spec.sweep import expand as expand_sweep
from engine.spec.locate import Locator
from engine.spec.schema import (TRAINING_KEYS, Config, Dataset, Experiment, Generation, Host, Optimizer,
                                Problem, Schedule, Slurm, SpecError, Training)

EXPERIMENT_KEYS = ("name", "dataset", "model", "model_options", "generations", "objective",
                   "objective_options", "ensembles", "ensemble_include_teacher", "seeds", "device",
                   "runs_dir", "gpus", "host", "generation", "description", "control", "deterministic",
                   "allow_tf32", "parts") + TRAINING_KEYS
DEFAULT_KEYS = tuple(k for k in EXPERIMENT_KEYS if k not in ("name", "generation", "control"))
GENERATION_KEYS = ("objective", "model", "model_options", "objective_options", "teacher", "seed",
                   "inherit", "freeze", "parts") + TRAINING_KEYS
DATASET_KEYS = tuple(f.name for f in fields(Dataset))
OPTIMIZER_KEYS = tuple(f.name for f in fields(Optimizer))
SCHEDULE_KEYS = tuple(f.name for f in fields(Schedule))
SCHEDULES = ("constant", "multistep", "cosine", "onecycle", "plateau")
HOST_KEYS = ("ssh", "workdir", "python", "runs_dir")
SLURM_KEYS = tuple(f.name for f in fields(Slurm))
SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
SLOT_KEYS = ("gpus", "slots")
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INHERITABLE = ("stem", "head")
# Upper bounds by key: far above any real run, low enough that a slip (a few extra zeros) is caught
# here rather than by an engine that overflows or never ends. (lr: bounded only against overflow;
# one that diverges is the engine's to report, as a non-finite loss at its epoch and step.)
MOST = {"lr": 1e30, "epochs": 10_000, "batch_size": 1 << 20, "eval_batch_size": 1 << 20, "generations": 100,
        "gpus": 1024, "seed": 2**32 - 1, "teacher": 100, "weight_decay": 1, "grad_clip": 1e6,
        "warmup_epochs": 10_000, "threshold": 1e6, "temperature": 1e3, "teacher_weight": 1e3,
        "label_weight": 1e3,
        # counts a host or a batch system can have (engine.scheduler.MAX_SLOTS slots, GPUs per node)
        "slots": 1024, "gpus_per_job": 1024, "cpus_per_job": 1 << 16, "max_parallel": 100_000,
        "signal_delay_s": 86_400}
MOST_SEEDS = 10_000   # seeds per experiment
MAX_NESTING = 64      # arrays and inline tables inside each other: deeper is a generated file gone wrong

# The values model options take, by option name, as the model builders (engine/models/*) declare
# them: (kind, least, most), kind "int", "num" (int or float) or "bool"; least exclusive for
# "num" when it is given as (value, "open"). An option not listed is checked by its builder.
MODEL_OPTION_VALUES = {
    "width": ("num", (0, "open"), 64), "dropout": ("num", 0, 0.99), "depth": ("int", 1, 1000),
    "growth": ("int", 1, 1024), "compression": ("num", (0, "open"), 1), "depth_factor": ("num", (0, "open"), 100),
    "compression_factor": ("num", (0, "open"), 100), "layers": ("int", 1, 64), "hidden": ("int", 1, 1 << 16),
    "tied": ("bool", None, None), "init_range": ("num", (0, "open"), 10), "char_embed": ("int", 1, 4096),
    "filters_per_width": ("int", 1, 4096), "max_filters": ("int", 1, 1 << 16), "highway": ("int", 0, 64),
    "max_word_len": ("int", 1, 1024),
}
# The options each built-in data set takes (engine/data/images.py, engine/data/ptb.py), as above;
# "str" for a file name. A data set not listed (one added elsewhere) is checked by its loader.
DIGITS_TRAIN = 1437   # scikit-learn's digits: 1797 images, 20 % held out as the test split
DATASET_OPTION_VALUES = {
    "digits": {"num_classes": ("int", 1, 1 << 20), "train_images": ("int", 10, DIGITS_TRAIN)},
    "cifar10": {"num_classes": ("int", 1, 1 << 20)},   # more classes than labels: a head that does not fit
    "cifar100": {"num_classes": ("int", 1, 1 << 20)},
    "npz": {"train": ("str", None, None), "test": ("str", None, None), "num_classes": ("int", 1, 1 << 20)},
    "ptb": {"bptt": ("int", 1, 1 << 16), "train_tokens": ("int", 2, 1 << 40)},
}


def nesting_at(text: str) -> tuple[int, int] | None:
    """(line, column) where arrays and inline tables first nest deeper than MAX_NESTING (strings
    and comments skipped); None when they never do. Checked before parsing: the parser and the
    checks recurse once per level."""
    depth, line, col, quote, i = 0, 1, 0, None, 0
    while i < len(text):
        c = text[i]
        col += 1
        if c == "\n":
            line, col = line + 1, 0
            if quote in ('"', "'"):
                quote = None
        elif quote is not None:
            if c == "\\" and quote == '"':
                i, col = i + 1, col + 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line, col
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def local_cuda_devices() -> list[int] | None:
    """This machine's CUDA GPU indices as nvidia-smi lists them ([] without nvidia-smi: no GPU to
    use). The engine's own import of the slot code (torch-free)."""
    from engine.scheduler import detect_gpus
    return detect_gpus()


def did_you_mean(word, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fmt(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def describe(v) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"integer {v}"
    if isinstance(v, float):
        return f"number {v}"
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


class Checker:
    # what engine.spec.sweep (below this module) reports with
    describe, did_you_mean, experiment_keys = staticmethod(describe), staticmethod(did_you_mean), EXPERIMENT_KEYS

    def __init__(self, file: str, text: str, extra_hosts=()):
        self.file, self.text = file, text
        self.extra_hosts = set(extra_hosts)   # hosts known from elsewhere (the user's hosts file)
        self.problems: list[Problem] = []
        self._seen: set = set()
        self._shared_parts = None   # the experiment's `parts`, for generations without their own
        self.loc = Locator(text)

    # -- reporting --
    def bad(self, path: tuple, message: str) -> None:
        line, col = self.loc.find(path)
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        self.problems.append(Problem(self.file, line, col, key, message))

    def expect(self, path, value, kind: str, found_ok) -> bool:
        if not found_ok:
            self.bad(path, f"expected {kind}, found {describe(value)}")
            return False
        return True

    def unknown_keys(self, path: tuple, table: dict, allowed) -> None:
        for k in table:
            if k not in allowed:
                self.bad(path + (k,), f"unknown key{did_you_mean(k, allowed)}; expected one of: "
                         + ", ".join(allowed))

    # -- typed getters: return the value, or None after recording a problem --
    def too_big(self, path, v, hi, kind: str) -> bool:
        if hi is not None and v > hi:
            self.bad(path, f"expected {kind} <= {_fmt(hi)} (the upper bound for {path[-1]}), found {_fmt(v)}")
            return True
        return False

    def int_(self, path, v, lo=None):
        if not isinstance(v, int) or isinstance(v, bool):
            self.expect(path, v, "an integer" + (f" >= {lo}" if lo is not None else ""), False)
            return None
        if lo is not None and v < lo:
            self.bad(path, f"expected an integer >= {lo}, found {v}")
            return None
        return None if self.too_big(path, v, MOST.get(path[-1]), "an integer") else v

    def num(self, path, v, lo=None, hi=None, lo_open=False):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            self.expect(path, v, "a number", False)
            return None
        if not math.isfinite(v):
            self.bad(path, f"expected a finite number, found {v}")
            return None
        if hi is None and self.too_big(path, v, MOST.get(path[-1]), "a number"):
            return None
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            rng = (f"> {lo}" if lo_open else f">= {lo}") if lo is not None else ""
            rng += (" and " if rng and hi is not None else "") + (f"<= {hi}" if hi is not None else "")
            self.bad(path, f"expected a number {rng}, found {v}")
            return None
        return float(v)

    def bool_(self, path, v):
        return v if self.expect(path, v, "true or false", isinstance(v, bool)) else None

    def str_(self, path, v):
        return v if self.expect(path, v, "a string", isinstance(v, str)) else None

    def table(self, path, v):
        return v if self.expect(path, v, "a table", isinstance(v, dict)) else None

    def choice(self, path, v, choices, what):
        if self.str_(path, v) is None:
            return None
        if v not in choices:
            self.bad(path, f"unknown {what} {v!r}{did_you_mean(v, choices)}; expected one of: "
                     + ", ".join(choices))
            return None
        return v

    def model(self, path, v):
        if self.str_(path, v) is None:
            return None
        if catalog.parse_reference(v) or ":" in v:
            return self.model_reference(path, v)
        try:
            catalog.resolve_model(v)
        except KeyError:
            self.bad(path, f"unknown model {v!r}{did_you_mean(v, catalog.model_examples())}; "
                     "run `ban models` for the list")
            return None
        return v

    # -- sections --
    def check(self) -> Config:
        if (at := nesting_at(self.text)) is not None:
            raise SpecError([Problem(self.file, at[0], at[1], "", f"expected arrays and inline tables nested at most "
                                     f"{MAX_NESTING} deep, found deeper")])
        try:
            doc = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+), column (\d+)", str(exc))
            line, col = (int(m.group(1)), int(m.group(2))) if m else (None, None)
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
            raise SpecError([Problem(self.file, line, col, "", f"TOML syntax error: {msg}")])
        self.unknown_keys((), doc, ("defaults", "experiment", "hosts"))
        defaults = doc.get("defaults", {})
        if self.table(("defaults",), defaults) is None:
            defaults = {}
        self.unknown_keys(("defaults",), defaults, DEFAULT_KEYS)
        hosts = self.hosts(doc.get("hosts", {}))
        exps = doc.get("experiment", [])
        experiments: dict[str, Experiment] = {}
        if not isinstance(exps, list):
            self.bad(("experiment",), f"expected an array of tables [[experiment]], found {describe(exps)}")
            exps = []
        if not exps and not self.problems:
            self.bad(("experiment",), "expected at least one [[experiment]] table, found none")
        sweeps: dict[str, dict[str, dict]] = {}
        for i, raw in enumerate(exps):
            for exp, parent, cell in expand_sweep(self, i, raw, defaults, lambda r, i=i: self.experiment(i, defaults, r, hosts)):
                if exp is None:
                    continue
                for e in [exp] + self.control(("experiment", i, "control"), exp, raw.get("control")):
                    if e.name in experiments:
                        self.bad(("experiment", i, "name"), f"expected a unique name, found {e.name!r} again")
                    experiments[e.name] = e
                if parent is not None:
                    sweeps.setdefault(parent, {})[exp.name] = cell
        if self.problems:
            raise SpecError(self.problems)
        return Config(self.file, experiments, hosts, sweeps)

    def hosts(self, raw) -> dict[str, Host]:
        out = {}
        if self.table(("hosts",), raw) is None:
            return out
        for name, h in raw.items():
            p = ("hosts", name)
            try:
                check_name(name, "host name")
            except ValueError as exc:
                self.bad(p, str(exc))
                continue
            if self.table(p, h) is None:
                continue
            self.unknown_keys(p, h, HOST_KEYS + SLOT_KEYS + ("slurm",))
            if "ssh" not in h and name != "local":
                self.bad(p, "expected key 'ssh' (an ssh destination or ~/.ssh/config alias), found none")
                continue
            vals = {k: self.str_(p + (k,), h[k]) for k in HOST_KEYS if k in h}
            slots = self.host_slots(p, h)
            if None in vals.values() or slots is None or not self.host_contradictions(p, name, h):
                continue
            ssh = vals.setdefault("ssh", "")
            if ssh.startswith("-") or any(c in ssh for c in " \n\t'\";$`"):
                self.bad(p + ("ssh",), f"expected an ssh destination like user@host or an alias, found {vals['ssh']!r}")
                continue
            if "slurm" in h:
                vals["slurm"] = self.slurm(p + ("slurm",), h["slurm"])
            out[name] = Host(name=name, **vals, **slots)
        return out

    def host_contradictions(self, p, name, h) -> bool:
        """False after recording what a host table asks for that cannot both hold: GPU slots and
        CPU slots, an empty ssh destination, a Slurm cluster on this machine."""
        ok = True
        if "gpus" in h and "slots" in h:
            self.bad(p + ("slots",), "expected either gpus (GPU slots) or slots (CPU slots), found both")
            ok = False
        if h.get("ssh") == "":
            self.bad(p + ("ssh",), "expected an ssh destination like user@host or an alias, found an empty string")
            ok = False
        if "slurm" in h and "ssh" not in h:
            self.bad(p + ("slurm",), f"expected a slurm table on a host reached by ssh (its login node), found one on "
                     f"{name!r}, which has no ssh")
            ok = False
        return ok

    def host_slots(self, p, h) -> dict | None:
        """`gpus = [0, 1, 3]` (distinct GPU indices) or `slots = N` (CPU slots); None if bad."""
        gpus, slots = h.get("gpus"), h.get("slots")
        if gpus is not None and not (isinstance(gpus, list) and gpus and len(set(gpus)) == len(gpus) and all(
                isinstance(g, int) and not isinstance(g, bool) and 0 <= g < MOST["gpus"] for g in gpus)):
            self.bad(p + ("gpus",), f"expected a non-empty array of distinct GPU indices (0 to {MOST['gpus'] - 1}) like [0, 1, 3], found "
                     + (repr(gpus) if isinstance(gpus, list) else describe(gpus)))
            return None
        if slots is not None and self.int_(p + ("slots",), slots, 1) is None:
            return None
        return {"gpus": gpus, "slots": slots}

    def slurm(self, path, raw) -> Slurm | None:
        """A host's `slurm` table (see engine.spec.schema.Slurm)."""
        if self.table(path, raw) is None:
            return None
        self.unknown_keys(path, raw, SLURM_KEYS)
        out = Slurm()
        for k in ("partition", "account", "qos", "constraint"):
            if k in raw and (v := self.str_(path + (k,), raw[k])) is not None:
                setattr(out, k, v)
        for k, lo in (("gpus_per_job", 0), ("cpus_per_job", 1), ("signal_delay_s", 1), ("max_parallel", 1)):
            if k in raw and (v := self.int_(path + (k,), raw[k], lo)) is not None:
                setattr(out, k, v)
        if "mem_gb" in raw and (v := self.num(path + ("mem_gb",), raw["mem_gb"], 0, lo_open=True)) is not None:
            out.mem_gb = v
        if "time" in raw:
            out.time = self.slurm_time(path + ("time",), raw["time"])
        if "setup" in raw:
            lines = raw["setup"]
            if self.expect(path + ("setup",), lines, "an array of strings (shell lines)",
                           isinstance(lines, list) and all(isinstance(x, str) for x in lines)):
                out.setup = list(lines)
        return out

    def slurm_time(self, path, v) -> int:
        """Minutes from a Slurm time ("4:00:00", "1-12:00:00", "90" or an integer of minutes)."""
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        m = SLURM_TIME.fullmatch(v) if isinstance(v, str) else None
        if m is None:
            self.bad(path, f"expected a Slurm time like \"4:00:00\", \"1-12:00:00\" or minutes >= 1, found {describe(v)}")
            return Slurm.time
        days, a, b, c = (int(x) if x else None for x in m.groups())
        if days is not None:      # days-hours[:minutes[:seconds]]
            seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
        elif c is not None:       # hours:minutes:seconds
            seconds = (a * 60 + b) * 60 + c
        else:                     # minutes[:seconds]
            seconds = a * 60 + (b or 0)
        return max(1, -(-seconds // 60))

    def training(self, path, raw: dict, base: Training) -> Training:
        t = Training(**{f.name: getattr(base, f.name) for f in fields(Training)})
        t.optimizer = Optimizer(**vars(base.optimizer))
        t.schedule = Schedule(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(base.schedule).items()})
        if "epochs" in raw and (v := self.int_(path + ("epochs",), raw["epochs"], 1)) is not None:
            t.epochs = v
        for k in ("batch_size", "eval_batch_size"):
            if k in raw and (v := self.int_(path + (k,), raw[k], 1)) is not None:
                setattr(t, k, v)
        if "grad_clip" in raw and (v := self.num(path + ("grad_clip",), raw["grad_clip"], 0, lo_open=True)) is not None:
            t.grad_clip = v
        if "precision" in raw and (v := self.choice(path + ("precision",), raw["precision"], PRECISIONS, "precision")):
            t.precision = v
        for k in ("channels_last", "compile", "teacher_cache"):
            if k in raw and (v := self.bool_(path + (k,), raw[k])) is not None:
                setattr(t, k, v)
        if "optimizer" in raw and (o := self.table(path + ("optimizer",), raw["optimizer"])) is not None:
            op = path + ("optimizer",)
            self.unknown_keys(op, o, OPTIMIZER_KEYS)
            if "lr" in o and (v := self.num(op + ("lr",), o["lr"], 0, lo_open=True)) is not None:
                t.optimizer.lr = v
            if "momentum" in o and (v := self.num(op + ("momentum",), o["momentum"], 0, 1)) is not None:
                t.optimizer.momentum = v
            if "weight_decay" in o and (v := self.num(op + ("weight_decay",), o["weight_decay"], 0)) is not None:
                t.optimizer.weight_decay = v
            if "nesterov" in o and (v := self.bool_(op + ("nesterov",), o["nesterov"])) is not None:
                t.optimizer.nesterov = v
        if "schedule" in raw:
            s = raw["schedule"]
            sp = path + ("schedule",)
            if isinstance(s, str):
                s = {"name": s}
            if self.table(sp, s) is not None:
                self.unknown_keys(sp, s, SCHEDULE_KEYS)
                if "name" in s and (v := self.choice(sp + ("name",), s["name"], SCHEDULES, "schedule")):
                    t.schedule = Schedule(name=v)
                if "milestones" in s:
                    ms = s["milestones"]
                    if not isinstance(ms, list) or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in ms):
                        self.bad(sp + ("milestones",), f"expected an array of positive epoch numbers, found {describe(ms)}")
                    elif ms != sorted(ms):
                        self.bad(sp + ("milestones",), f"expected increasing epochs, found {ms}")
                    else:
                        t.schedule.milestones = list(ms)
                if "gamma" in s and (v := self.num(sp + ("gamma",), s["gamma"], 0, 1, lo_open=True)) is not None:
                    t.schedule.gamma = v
                if "threshold" in s and (v := self.num(sp + ("threshold",), s["threshold"], 0)) is not None:
                    t.schedule.threshold = v
                if "warmup_epochs" in s and (v := self.num(sp + ("warmup_epochs",), s["warmup_epochs"], 0)) is not None:
                    t.schedule.warmup_epochs = v
        return t

    def options(self, path, v):
        return dict(v) if self.table(path, v) is not None else {}

    def dataset(self, path, raw) -> Dataset | None:
        if isinstance(raw, str):
            raw = {"name": raw}
        if self.table(path, raw) is None:
            return None
        self.unknown_keys(path, raw, DATASET_KEYS)
        if "name" not in raw:
            self.bad(path, "expected key 'name' (one of: " + ", ".join(catalog.DATASETS) + "), found none")
            return None
        if isinstance(raw["name"], str) and raw["name"].startswith("torchvision:"):
            name = self.torchvision_dataset(path + ("name",), raw["name"])
        else:
            name = self.choice(path + ("name",), raw["name"], catalog.DATASETS + ("torchvision:NAME",), "data set")
        if name is None:
            return None
        d = Dataset(name=name)
        if "root" in raw and (v := self.str_(path + ("root",), raw["root"])) is not None:
            d.root = v
        if "download" in raw and (v := self.bool_(path + ("download",), raw["download"])) is not None:
            d.download = v
        if "augment" in raw and (v := self.bool_(path + ("augment",), raw["augment"])) is not None:
            d.augment = v
        if "val_split" in raw and (v := self.num(path + ("val_split",), raw["val_split"], 0, 0.9)) is not None:
            d.val_split = v
        if "options" in raw:
            d.options = self.options(path + ("options",), raw["options"])
            self.dataset_options(path + ("options",), name, d.options)
        if name in ("cifar10", "cifar100", "npz", "ptb") and d.root is None:
            self.bad(path + ("root",), f"expected a data root directory for data set {name!r}, found none")
        self.file_dataset(path, raw, d)
        return d

    # -- the user's image files (issue 24): imagefolder, torchvision:NAME, hf --
    def torchvision_dataset(self, path, v):
        if not re.fullmatch(r"torchvision:[A-Za-z_]\w*", v):
            self.bad(path, f"expected torchvision:NAME with a torchvision.datasets class name like SVHN, found {v!r}")
            return None
        return v

    def file_dataset(self, path, raw, d: Dataset) -> None:
        """image_size, stream, workers, crop, path: only for file data sets, each checked."""
        import importlib.util
        keys = ("image_size", "stream", "workers", "crop", "path")
        is_file = d.name in catalog.FILE_DATASETS or d.name.startswith("torchvision:")
        if not is_file:
            for k in keys:
                if k in raw:
                    self.bad(path + (k,), f"expected {k} only for imagefolder, hf and torchvision:NAME data sets, "
                             f"found it for {d.name!r}")
            return
        if "image_size" not in raw:
            self.bad(path, f"expected key 'image_size' (the side images are resized and centre-cropped to) "
                     f"for data set {d.name!r}, found none")
        elif (v := self.int_(path + ("image_size",), raw["image_size"], 1)) is not None:
            d.image_size = v
        if "stream" in raw and (v := self.bool_(path + ("stream",), raw["stream"])) is not None:
            d.stream = v
        if "workers" in raw and (v := self.int_(path + ("workers",), raw["workers"], 0)) is not None:
            d.workers = v
        if "crop" in raw:
            d.crop = self.choice(path + ("crop",), raw["crop"], ("pad", "resized", "none"), "crop")
        if "path" in raw:
            d.path = self.str_(path + ("path",), raw["path"])
        if d.name == "hf":
            if d.path is None and d.root is None:
                self.bad(path, "expected key 'path' (a directory saved with datasets' save_to_disk), found none")
            package, pip = catalog.EXTRAS["hf"]
            if importlib.util.find_spec(package) is None:
                self.bad(path + ("name",), f"data set 'hf' needs {package}, which is not installed; install it with: {pip}")
        elif d.root is None:
            self.bad(path + ("root",), f"expected a data root directory for data set {d.name!r}, found none")

    def value_in(self, path, v, kind: str, least, most) -> None:
        """One option's value against its declared (kind, least, most)."""
        if kind == "bool":
            self.bool_(path, v)
        elif kind == "str":
            self.str_(path, v)
        elif kind == "int":
            if (v := self.int_(path, v, least)) is not None and most is not None and v > most:
                self.bad(path, f"expected an integer <= {_fmt(most)}, found {_fmt(v)}")
        else:
            open_ = isinstance(least, tuple)
            self.num(path, v, least[0] if open_ else least, most, lo_open=open_)

    def dataset_options(self, path, name, options: dict) -> None:
        """The options of a built-in data set: its own keys, each of its kind and range."""
        allowed = DATASET_OPTION_VALUES.get(name)
        if allowed is None:
            return
        for k, v in options.items():
            if k not in allowed:
                self.bad(path + (k,), f"unknown option for data set {name!r}{did_you_mean(k, allowed)}; "
                         "expected one of: " + ", ".join(allowed))
            else:
                self.value_in(path + (k,), v, *allowed[k])

    def experiment(self, i, defaults, raw, hosts) -> Experiment | None:
        p = ("experiment", i)
        if self.table(p, raw) is None:
            return None
        self.unknown_keys(p, raw, EXPERIMENT_KEYS)
        n_before = len(self.problems)
        merged = {**defaults, **raw}
        name = self.experiment_name(p, merged)
        where = lambda k: p + (k,) if k in raw else ("defaults", k)  # noqa: E731
        dataset = self.dataset(where("dataset"), merged.get("dataset", {"name": "digits"}))
        training = self.training(p if raw else ("defaults",), {k: merged[k] for k in TRAINING_KEYS if k in merged}, Training())
        model = self.model(where("model"), merged["model"]) if "model" in merged else "cnn-small"
        model_options = self.options(where("model_options"), merged.get("model_options", {}))
        objective_options = self.options(where("objective_options"), merged.get("objective_options", {}))
        shared = (model, model_options, objective_options, training)
        self._shared_parts = self.model_parts(where("parts"), merged["parts"]) if "parts" in merged else None
        if "generation" in raw:
            gens = self.generation_tables(p, raw, where, *shared)
        else:
            gens = self.uniform_generations(merged, where, *shared)
        gens = [g for g in gens if g is not None]
        ensembles = self.ensembles(where("ensembles"), merged.get("ensembles", []), len(gens) - 1)
        seeds = self.seeds(where("seeds"), merged.get("seeds", [0]))
        device, runs_dir, gpus, host = self.placement(merged, where, hosts)
        if host in (None, "local") and dataset is not None:   # a data root on this machine
            self.local_dir(where("dataset") + ("root",), dataset.root, f"data root for data set {dataset.name!r}")
        include = merged.get("ensemble_include_teacher", False)
        include = self.bool_(where("ensemble_include_teacher"), include) or False
        kernels = {k: self.bool_(where(k), merged[k]) for k in ("deterministic", "allow_tf32") if k in merged}
        self.model_kinds(where("model"), dataset, gens)
        if len(self.problems) > n_before or dataset is None or not isinstance(name, str):
            return None
        return Experiment(name=name, dataset=dataset, generations=gens, ensembles=list(ensembles),
                          ensemble_include_teacher=include, seeds=list(seeds), device=device,
                          runs_dir=runs_dir, gpus=gpus, host=host, source=self.file, **kernels)

    def experiment_name(self, p, merged):
        """The experiment's name as given (None when missing), a problem when it is not a valid name."""
        name = merged.get("name")
        if name is None:
            self.bad(p, "expected key 'name', found none")
        elif self.str_(p + ("name",), name) is not None:
            try:
                check_name(name, "experiment name")
            except ValueError as exc:
                self.bad(p + ("name",), str(exc))
        return name

    def generation_tables(self, p, raw, where, model, model_options, objective_options, training) -> list:
        """The generations of an experiment written as [[experiment.generation]] tables, whose shared
        objective options must each be an option of some objective."""
        every_option = sorted({o for opts in catalog.OBJECTIVE_OPTIONS.values() for o in opts})
        for k in objective_options:
            if k not in every_option:
                self.bad(where("objective_options") + (k,), "unknown objective option"
                         + did_you_mean(k, every_option) + "; expected one of: " + ", ".join(every_option))
        if "generations" in raw or "objective" in raw:
            self.bad(p + ("generation",), "expected either `generations` + `objective` or "
                     "[[experiment.generation]] tables, found both")
        gl = raw["generation"]
        if not isinstance(gl, list) or not gl:
            self.bad(p + ("generation",), f"expected an array of [[experiment.generation]] tables, found {describe(gl)}")
            gl = []
        if len(gl) > MOST["generations"] + 1:
            self.bad(p + ("generation",), f"expected at most {MOST['generations'] + 1} generations "
                     f"(the upper bound for generations), found {len(gl)}")
            gl = []
        gens = []
        for j, g in enumerate(gl):
            if isinstance(g, dict) and "model" not in g and model is not None:   # takes the shared options
                self.model_options(where("model_options"), model, model_options)
            gens.append(self.generation(p + ("generation", j), j, g, model, model_options, objective_options, training))
        return gens

    def uniform_generations(self, merged, where, model, model_options, objective_options, training) -> list:
        """`generations = n` + `objective`: a `ce` teacher, then n students of one objective, each
        taught by the one before (by none for a teacherless objective)."""
        n = self.int_(where("generations"), merged.get("generations", 3), 0)
        obj = self.choice(where("objective"), merged.get("objective", "ban"), catalog.OBJECTIVES, "objective")
        if model is not None:
            self.model_options(where("model_options"), model, model_options)
        if n is None or obj is None:
            return []
        parts = self._shared_parts
        gens = [Generation(0, "ce", model, dict(model_options), {}, None, training=training, parts=parts)]
        opts = self.objective_options(where("objective_options")[:-1], obj, {}, objective_options) if n else {}
        for j in range(1, n + 1):
            gens.append(Generation(j, obj, model, dict(model_options), dict(opts),
                                   None if obj in catalog.TEACHERLESS else j - 1, training=training, parts=parts))
        return gens

    def ensembles(self, path, ensembles, n_students: int) -> list:
        """The Ens*k sizes: integers between 1 and the number of student generations."""
        if not (isinstance(ensembles, list) and all(isinstance(k, int) and not isinstance(k, bool) for k in ensembles)):
            self.bad(path, f"expected an array of generation counts like [2, 3], found {describe(ensembles)}")
            return []
        for k in ensembles:
            if not 1 <= k <= max(n_students, 0):
                self.bad(path, f"expected each k between 1 and the number of student generations "
                         f"({n_students}), found {k}")
        if len(set(ensembles)) != len(ensembles):
            self.bad(path, f"expected distinct ensemble sizes (each Ens*k once), found {ensembles}")
        return ensembles

    def local_dir(self, path, value, what: str) -> None:
        """A local path that must be a directory: refused when it exists as something else (one
        that does not exist yet is made, or downloaded into, later)."""
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            if p.exists() and not p.is_dir():
                self.bad(path, f"expected a {what} (a directory), found a file: {value}")

    def local_device(self, path, device) -> None:
        """cuda:N on this machine: N among the GPUs nvidia-smi lists here."""
        m = re.fullmatch(r"cuda:(\d+)", device) if isinstance(device, str) else None
        if m is None:
            return
        have = local_cuda_devices()
        if int(m.group(1)) not in have:
            devices = ", ".join(["cpu"] + [f"cuda:{i}" for i in have])
            self.bad(path, f"expected a device of this host ({devices}: nvidia-smi "
                     f"{'lists ' + str(len(have)) + ' GPUs' if have else 'finds no GPU'}), found {device!r}")

    def placement(self, merged, where, hosts) -> tuple:
        """(device, runs_dir, gpus, host): where the experiment runs, the host one of [hosts] or of
        the user's hosts file."""
        device = merged.get("device", "auto")
        if self.str_(where("device"), device) is not None and not DEVICES.fullmatch(device):
            self.bad(where("device"), f"expected auto, cpu, cuda or cuda:N, found {device!r}")
        runs_dir = self.str_(where("runs_dir"), merged.get("runs_dir", "runs")) or "runs"
        gpus = self.int_(where("gpus"), merged.get("gpus", 1), 1) or 1
        host = merged.get("host")
        if host in (None, "local"):   # paths and devices of this machine
            self.local_dir(where("runs_dir"), runs_dir, "runs directory")
            self.local_device(where("device"), device)
        if host is not None and self.str_(where("host"), host) is not None and host not in hosts \
                and host not in self.extra_hosts:
            self.bad(where("host"), f"expected a host defined under [hosts], found {host!r}"
                     + did_you_mean(host, list(hosts) + sorted(self.extra_hosts)))
        return device, runs_dir, gpus, host

    def model_kinds(self, path, dataset, gens) -> None:
        """Language models for a language data set, image models for the others (one problem)."""
        if not dataset:
            return
        lm = dataset.name in catalog.LM_DATASETS
        for g in gens:
            if lm and catalog.parse_reference(g.model):
                self.bad(path, f"expected a language model for data set {dataset.name!r}, found {g.model!r} "
                         "(models by reference are image models)")
                break
            fam = catalog.resolve_model(g.model)[0] if self._known(g.model) else None
            if fam and (fam.kind == "lm") != lm:
                if lm:
                    self.bad(path, f"expected a language model for data set {dataset.name!r}, found image model {g.model!r}")
                else:
                    self.bad(path, f"expected an image model for data set {dataset.name!r}, found language model {g.model!r}")
                break

    def seeds(self, path, seeds) -> list:
        if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            self.bad(path, f"expected a non-empty array of non-negative integers, found {describe(seeds)}")
            return [0]
        if max(seeds) > MOST["seed"]:
            self.bad(path, f"expected seeds <= {MOST['seed']} (the upper bound for seed), found {max(seeds)}")
            return [0]
        if len(seeds) > MOST_SEEDS:
            self.bad(path, f"expected at most {MOST_SEEDS} seeds, found {len(seeds)}")
            return [0]
        if len(set(seeds)) != len(seeds):
            self.bad(path, f"expected distinct seeds, found {seeds}")
        return seeds

    def control(self, path, exp: Experiment, value) -> list[Experiment]:
        """`control = "independent"`: the experiment's independent-CE control, named
        <name>+ce: the same generations (models, training, seeds) each trained by `ce` with
        no teacher, inheriting and freezing nothing; its Ens*k averages k independent models."""
        if value is None or self.choice(path, value, catalog.CONTROLS, "control") is None:
            return []
        gens = [replace(g, objective="ce", objective_options={}, teacher=None, inherit=[], freeze=[])
                for g in exp.generations]
        return [replace(exp, name=exp.name + catalog.CONTROL_SUFFIX, generations=gens)]

    @staticmethod
    def _known(model) -> bool:
        try:
            catalog.resolve_model(model)
            return True
        except KeyError:
            return False

    def generation(self, p, j, raw, model, model_options, objective_options, training) -> Generation | None:
        if self.table(p, raw) is None:
            return None
        self.unknown_keys(p, raw, GENERATION_KEYS)
        default_obj = "ce" if j == 0 else "ban"
        obj = self.choice(p + ("objective",), raw.get("objective", default_obj), catalog.OBJECTIVES, "objective")
        m = self.model(p + ("model",), raw["model"]) if "model" in raw else model
        teacher = raw.get("teacher", None if j == 0 else j - 1)
        if obj in catalog.TEACHERLESS and "teacher" not in raw:
            teacher = None
        if teacher is not None:
            if self.int_(p + ("teacher",), teacher, 0) is None:
                teacher = None
            elif teacher >= j:
                self.bad(p + ("teacher",), f"expected an earlier generation (0..{j - 1}), found {teacher}"
                         if j else "expected no teacher for generation 0 (it is the teacher), found 0")
                teacher = None
        if obj is not None and obj not in catalog.TEACHERLESS and teacher is None and "teacher" not in raw:
            self.bad(p + ("objective",), f"expected 'ce' for generation 0 (a {obj!r} student needs a teacher), found {obj!r}")
        seed = raw.get("seed")
        if seed is not None and self.int_(p + ("seed",), seed, 0) is None:
            seed = None
        lists = {}
        for k in ("inherit", "freeze"):
            v = raw.get(k, [])
            if not isinstance(v, list) or any(x not in INHERITABLE for x in v):
                self.bad(p + (k,), f"expected an array of parts among {list(INHERITABLE)}, found "
                         + (repr(v) if isinstance(v, list) else describe(v)))
                v = []
            lists[k] = list(v)
        if lists["inherit"] and teacher is None:
            self.bad(p + ("inherit",), "expected a teacher to inherit from, found a generation without one")
        for part in lists["freeze"]:
            if part not in lists["inherit"]:
                self.bad(p + ("freeze",), f"expected frozen parts to be inherited too, found {part!r} not in inherit")
        t = self.training(p, raw, training)
        parts = self.model_parts(p + ("parts",), raw["parts"]) if "parts" in raw else self._shared_parts
        if obj is None or m is None:
            return None
        own_model_options = self.options(p + ("model_options",), raw.get("model_options", {}))
        self.model_options(p + ("model_options",), m, own_model_options)
        return Generation(j, obj, m, own_model_options if "model" in raw else {**model_options, **own_model_options},
                          self.objective_options(p, obj, objective_options, raw.get("objective_options", {})),
                          teacher, seed, lists["inherit"], lists["freeze"], t, parts)

    # -- models by reference (issue 24); torch-free: `python -m engine check` builds them --
    def model_reference(self, path, v):
        """`pkg.module:factory`, `timm:NAME` or `torchvision:NAME`; the package it needs installed."""
        import importlib.util
        ref = catalog.parse_reference(v)
        if ref is None:
            self.bad(path, f"expected a model reference like pkg.module:factory, timm:NAME or torchvision:NAME, "
                     f"found {v!r}")
            return None
        if ref[0] in catalog.EXTRAS:
            package, pip = catalog.EXTRAS[ref[0]]
            if importlib.util.find_spec(package) is None:
                self.bad(path, f"model {v!r} needs {package}, which is not installed; install it with: {pip}")
                return None
        return v

    def model_parts(self, path, raw) -> dict | None:
        """`parts = { stem = "conv1", head = "fc" }`: the module path of each inheritable part."""
        if self.table(path, raw) is None:
            return None
        self.unknown_keys(path, raw, catalog.REFERENCE_PARTS)
        out = {}
        for k, v in raw.items():
            if k in catalog.REFERENCE_PARTS and self.str_(path + (k,), v) is not None:
                if not re.fullmatch(r"[\w]+(\.[\w]+)*", v):
                    self.bad(path + (k,), f"expected a module path like \"conv1\" or \"head.fc\", found {v!r}")
                else:
                    out[k] = v
        return out or None

    def model_options(self, path, model, options: dict) -> None:
        """Every option is a keyword argument of the model family's builder (catalog.MODEL_OPTIONS)
        with a finite value; each problem reported once however many generations share it."""
        if not self._known(model):
            return
        allowed = catalog.MODEL_OPTIONS[catalog.resolve_model(model)[0].family]
        for k, v in options.items():
            if (path, k, model) in self._seen:
                continue
            self._seen.add((path, k, model))
            if k not in allowed:
                self.bad(path + (k,), f"unknown option for model {model!r}{did_you_mean(k, allowed)}; "
                         "expected one of: " + (", ".join(allowed) or "none"))
            elif isinstance(v, float) and not math.isfinite(v):
                self.bad(path + (k,), f"expected a finite number, found {v}")
            elif k in MODEL_OPTION_VALUES:
                self.value_in(path + (k,), v, *MODEL_OPTION_VALUES[k])

    def objective_options(self, p, obj, shared: dict, own) -> dict:
        """The experiment's options apply where the objective takes them; a generation's own
        options must all be ones its objective takes."""
        own = self.options(p + ("objective_options",), own)
        allowed = catalog.OBJECTIVE_OPTIONS[obj]
        for k, v in own.items():
            if k not in allowed:
                self.bad(p + ("objective_options", k), f"unknown option for objective {obj!r}"
                         + did_you_mean(k, allowed) + "; expected one of: " + (", ".join(allowed) or "none"))
        merged = {**{k: v for k, v in shared.items() if k in allowed}, **own}
        for k, v in merged.items():
            if k in allowed:
                self.num(p + ("objective_options", k), v, 0, lo_open=True)
        return merged
