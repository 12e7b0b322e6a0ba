"""`experiments.toml`: the config schema (the resolved experiment's dataclasses) and the
problems a config can have.

Imports no torch and no textual: `ban validate`, `ban run` and the TUI use it before anything
is launched. The engine reads the same schema; a run's `experiment.toml` snapshot is itself a
valid config file holding one fully resolved experiment.

Schema (every key optional unless marked):

    [defaults]                 # any experiment key, shared by all experiments
    runs_dir = "runs"
    device = "auto"            # auto | cpu | cuda | cuda:N

    [[experiment]]
    name = "quickstart"        # required; letters, digits, . _ + -
    dataset = { name = "digits", root = "...", download = false, val_split = 0.0, augment = true }
    # or your files at any size: { name = "imagefolder" | "torchvision:SVHN" | "hf", root = "...",
    #   image_size = 64, stream = true, workers = 4, crop = "resized" }
    model = "cnn-small"        # default model of every generation
    model_options = {}         # e.g. { dropout = 0.3 }
    epochs = 15
    batch_size = 64
    optimizer = { lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }
    schedule = "cosine"        # or { name = "multistep", milestones = [60, 120, 160], gamma = 0.2 }
    generations = 3            # shorthand: a teacher (ce) + 3 students with `objective`
    objective = "ban"          # shorthand objective of the students
    objective_options = {}     # e.g. { temperature = 1.0, teacher_weight = 1, label_weight = 1 }
    ensembles = [2, 3]         # Ens*k over BAN-1..BAN-k
    ensemble_include_teacher = false
    seeds = [0]                # the whole chain is repeated per seed
    host = "gpu1"              # optional: run on a [hosts.NAME] by default
    deterministic = false      # GPU: deterministic kernels, bit-identical resumes (docs/gpu.md)
    allow_tf32 = false         # GPU: TF32 for fp32 matmuls/convolutions (the fp32 head, precision "fp32")

    # or, instead of the shorthand, an explicit chain (generation 0 is the teacher):
    [[experiment.generation]]
    objective = "ce"
    [[experiment.generation]]
    objective = "ban+l"
    model = "densenet-bc-90-60"   # a cross-architecture student
    teacher = 0                   # default: the previous generation
    epochs = 30                   # any training key overrides the experiment's
    inherit = ["stem", "head"]    # parts copied from the teacher (issue 9)
    freeze = ["stem", "head"]
    # model = "pkg.module:factory" | "timm:NAME" | "torchvision:NAME" (issue 24): a model by
    # reference; parts = { stem = "conv1", head = "fc" } names its inheritable module paths

    [hosts.gpu1]
    ssh = "gpu1"               # an ssh destination or ~/.ssh/config alias
    workdir = "~/ban"
    python = "~/ban/.venv/bin/python"
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


# ---- the resolved experiment --------------------------------------------------------------

@dataclass
class Optimizer:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclass
class Schedule:
    name: str = "cosine"                 # constant | multistep | cosine | onecycle | plateau
    milestones: list = field(default_factory=list)   # epochs, for multistep
    gamma: float = 0.2                   # multistep / plateau decay factor
    threshold: float = 0.0               # plateau: decay when the metric improves by less
    warmup_epochs: float = 0.0


@dataclass
class Dataset:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    val_split: float = 0.0
    augment: bool = True
    options: dict = field(default_factory=dict)   # data-set specific (npz file names, bptt...)
    # the user's image files (imagefolder, torchvision:NAME, hf; engine/data/files.py), issue 24:
    image_size: int | None = None   # resized (shorter side) and centre-cropped to this side
    stream: bool | None = None      # None: streamed when it does not fit in memory; true/false force it
    workers: int | None = None      # DataLoader workers of the streamed path (default: min(4, cpus - 1))
    crop: str | None = None         # pad | resized | none (default: resized at >= 64 pixels, else pad)
    path: str | None = None         # hf: the save_to_disk directory (or root)


@dataclass
class Training:
    epochs: int = 15
    batch_size: int = 64
    eval_batch_size: int = 512
    optimizer: Optimizer = field(default_factory=Optimizer)
    schedule: Schedule = field(default_factory=Schedule)
    grad_clip: float | None = None
    precision: str = "auto"      # auto | fp32 | bf16 | fp16 (auto: engine/hardware.py, bf16 on CUDA and bf16 CPUs)
    channels_last: bool | None = None   # None: on for CUDA, on the CPU where faster (engine/hardware.py)
    compile: bool = False
    teacher_cache: bool = False


TRAINING_KEYS = ("epochs", "batch_size", "eval_batch_size", "optimizer", "schedule", "grad_clip",
                 "precision", "channels_last", "compile", "teacher_cache")


@dataclass
class Generation:
    index: int                   # 0 is the teacher
    objective: str
    model: str
    model_options: dict = field(default_factory=dict)
    objective_options: dict = field(default_factory=dict)
    teacher: int | None = None   # the generation whose outputs it learns from (None: none)
    seed: int | None = None      # None: derived from the chain seed and the index
    inherit: list = field(default_factory=list)
    freeze: list = field(default_factory=list)
    training: Training = field(default_factory=Training)
    parts: dict | None = None    # a reference model's { stem = "conv1", head = "fc" } module paths

    @property
    def role(self) -> str:
        return "teacher" if self.teacher is None else "student"


@dataclass
class Experiment:
    name: str
    dataset: Dataset
    generations: list[Generation]
    ensembles: list[int] = field(default_factory=list)
    ensemble_include_teacher: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    runs_dir: str = "runs"
    gpus: int = 1
    host: str | None = None
    deterministic: bool | None = None   # None is false (and leaves the config hash of older configs as it was)
    allow_tf32: bool | None = None      # None is false
    source: str = ""             # the file it came from (for messages)

    def to_dict(self) -> dict:
        """The experiment as a config-file table (explicit generations, no shorthand)."""
        d = asdict(self)
        d.pop("source")
        for g in d["generations"]:
            g.pop("index")
            g.update(g.pop("training"))
        return _drop_none(d)

    def config_hash(self, resolved: dict | None = None) -> str:
        """The hash of the experiment table and, given `resolved` (engine.hardware.resolved), of
        what changes the numbers beside it: the device type and each generation's precision."""
        table = self.to_dict()
        if resolved is not None:
            table = {**table, "resolved": numbers_key(resolved)}
        return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]


def numbers_key(resolved: dict) -> dict:
    """The part of a run's resolved settings that changes its numbers: the device type and the
    precision of each generation (channels-last and compile change speed, not the arithmetic)."""
    return {"device_type": resolved.get("device_type"),
            "precision": [g.get("precision") for g in resolved.get("generations", [])]}


@dataclass
class Slurm:
    """A host's `slurm = {...}` table: `ban run --host` submits one Slurm job per chain there
    (ban_tui.slurm, through submitit). `time` is the job's limit in minutes; Slurm sends SIGUSR2
    `signal_delay_s` before it, the engine checkpoints and the job is requeued."""
    partition: str | None = None
    time: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    max_parallel: int | None = None     # at most this many jobs of one array at once
    setup: list[str] = field(default_factory=list)   # shell lines run before the engine (module load ...)


@dataclass
class Host:
    name: str
    ssh: str
    workdir: str = "~/ban"
    python: str = "python3"
    runs_dir: str = "runs"
    slurm: Slurm | None = None
    gpus: list[int] | None = None   # the GPUs to hand out as slots (default: what nvidia-smi lists)
    slots: int | None = None        # CPU slots of a box without GPUs (default 1)

    @property
    def local(self) -> bool:
        """`[hosts.local]` without `ssh` describes this machine (its slots)."""
        return not self.ssh


@dataclass
class Config:
    path: str
    experiments: dict[str, Experiment]
    hosts: dict[str, Host]
    sweeps: dict[str, dict[str, dict]] = field(default_factory=dict)   # parent -> {child name: cell}


def _drop_none(x):
    if isinstance(x, dict):
        return {k: _drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_none(v) for v in x]
    return x


# ---- problems -----------------------------------------------------------------------------

@dataclass
class Problem:
    file: str
    line: int | None
    col: int | None
    key: str
    message: str          # "expected ..., found ..." (+ did you mean)

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "") + (f":{self.col}" if self.col else "")
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SpecError(Exception):
    """Every problem of a config file, found in one pass."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
