"""What the machine offers, and the training settings that follow from it (torch side).

precision = "auto" (engine.spec.Training.precision):
  - CUDA: bf16 autocast.
  - CPU: bf16 autocast when `cpu_bf16_capable()` and the model is an image model, else fp32.
    Language models stay fp32 on the CPU under auto (bf16 was not measured for them); ask for
    precision = "bf16" explicitly to try it.
  - anything else (mps): fp32.
  Explicit "fp32" / "bf16" / "fp16" are kept as written.

`cpu_bf16_capable()`: bf16 arithmetic in hardware, which is what makes bf16 autocast faster
than fp32 (without it oneDNN emulates bf16 and a step is several times *slower*). The check is
  - oneDNN (the library behind CPU convolutions and matmuls) can run bf16 on this CPU:
    `torch.ops.mkldnn._is_mkldnn_bf16_supported()`, and
  - the CPU has bf16 dot-product instructions, from `torch.cpu.get_capabilities()` (cpuinfo):
    x86 `avx512_bf16` or `amx_bf16` (Intel Cooper Lake and later, AMD Zen 4 and later);
    ARM `bf16` or `sve_bf16`.
  The environment variable BAN_FORCE_CPU_BF16=1 / 0 overrides the answer (tests, or a user who
  measured otherwise).

channels_last = None (the default): on for CUDA; on the CPU, on for the model families that
  `bench/cpu_precision.py` measured faster channels-last (CPU_CHANNELS_LAST), off for the rest
  (cnn-small on 8x8 digits is slower channels-last). True / False are kept as written.

Kernels (`configure_kernels`, once per process, from the experiment's `deterministic` and
`allow_tf32`): on the CPU deterministic algorithms always (warn-only unless deterministic = true).
On a GPU by default cuDNN's autotuner (benchmark) and PyTorch's default kernels, some of which add
with atomics (scatter-add, index-add, some pooling backwards): a resumed run trains the same epochs on the same data in the
same order, its numbers equal to those of an uninterrupted run within noise, not bit for bit.
deterministic = true: cudnn.deterministic, benchmark off, torch.use_deterministic_algorithms(True)
(and CUBLAS_WORKSPACE_CONFIG=:4096:8 as cuBLAS asks): resumes are bit-identical, an op without a
deterministic kernel raises. TF32 is off (fp32 is fp32: the head that models/common.py keeps in
fp32 and precision = "fp32" runs) unless allow_tf32 = true.

What a run ran (`resolved(exp, device)` and `machine(device)`, recorded in run_start and the
snapshot): the precision, channels-last and compile each generation resolved to, and the device's
model (the CPU's model name and its bf16 answer; the GPU's name, CUDA and cuDNN versions). The
config hash counts the resolved precisions and the device type (engine.spec.Experiment.config_hash).

Threads: `intra_op_threads()` is the number of intra-op threads the engine uses: BAN_THREADS (the
slots a scheduler gave the run), else OMP_NUM_THREADS (which torch obeys anyway), else the CPUs this
process may run on (os.sched_getaffinity), shared between the local DDP ranks.
"""
from __future__ import annotations

import os
import platform

import torch

from engine import catalog

# Model families (engine.catalog) that train faster channels-last on the CPU (bench/cpu_precision.py).
CPU_CHANNELS_LAST = ("preact-resnet", "wrn", "ban-wrn", "ban-preresnet", "airbench")
FORCE_BF16 = "BAN_FORCE_CPU_BF16"
THREADS = "BAN_THREADS"
NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def cpu_bf16_capable() -> bool:
    """True when this CPU and this torch build do bf16 arithmetic in hardware (module docstring);
    BAN_FORCE_CPU_BF16=1/0 overrides."""
    forced = os.environ.get(FORCE_BF16)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{FORCE_BF16}: expected 0 or 1, found {forced!r}")
        return forced == "1"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):   # a build without oneDNN or cpuinfo
        return False
    return onednn and any(caps.get(k, False) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def model_kind(model: str | None) -> str | None:
    """"image" or "lm" for a catalog model name; None when unknown or not given."""
    try:
        return catalog.resolve_model(model)[0].kind if model is not None else None
    except KeyError:
        return None


def resolve_precision(precision: str, device: torch.device, model: str | None = None) -> str:
    """The precision a run trains in: "fp32", "bf16" or "fp16" (auto resolved as in the module
    docstring; `model` is the generation's model name, if known)."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and model_kind(model) != "lm" and cpu_bf16_capable():
        return "bf16"
    return "fp32"


def channels_last(setting: bool | None, device: torch.device, model: str) -> bool:
    """Whether an image model trains channels-last: `setting` when given, else the default of the
    module docstring."""
    if setting is not None:
        return setting
    device = torch.device(device)
    if device.type == "cuda":
        return True
    try:
        family = catalog.resolve_model(model)[0].family
    except KeyError:
        return False
    return device.type == "cpu" and family in CPU_CHANNELS_LAST


def intra_op_threads(environ=None) -> tuple[int, str]:
    """(threads, where the number came from: "BAN_THREADS", "OMP_NUM_THREADS" or "affinity")."""
    environ = os.environ if environ is None else environ
    for name in (THREADS, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}: expected a positive integer, found {value!r}")
            return int(value), name
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:   # no sched_getaffinity (macOS, Windows)
        cpus = os.cpu_count() or 1
    local = int(environ.get("LOCAL_WORLD_SIZE", 1) or 1)
    return max(1, cpus // max(1, local)), "affinity"


def set_threads() -> tuple[int, str]:
    """Set torch's intra-op threads from `intra_op_threads()`; returns what it set and why."""
    threads, source = intra_op_threads()
    torch.set_num_threads(threads)
    return threads, source


def configure_kernels(device: torch.device, deterministic: bool = False, allow_tf32: bool = False) -> dict:
    """Set the process's kernel choices as the module docstring says; returns `kernel_flags()`."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # before cuBLAS starts
    torch.use_deterministic_algorithms(device.type == "cpu" or deterministic, warn_only=not deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    if NEW_TF32_API:   # torch >= 2.9 (mixing it with allow_tf32 raises); cuDNN convolutions default to TF32
        value = "tf32" if allow_tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = value
        torch.backends.cudnn.rnn.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    return kernel_flags()


def kernel_flags() -> dict:
    """The kernel settings in force, read back from torch (run_start records them)."""
    if NEW_TF32_API:
        tf32 = {"tf32_matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
                "tf32_conv": torch.backends.cudnn.conv.fp32_precision == "tf32",
                "tf32_rnn": torch.backends.cudnn.rnn.fp32_precision == "tf32"}
    else:
        tf32 = {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_conv": torch.backends.cudnn.allow_tf32,
                "tf32_rnn": torch.backends.cudnn.allow_tf32}
    return {"deterministic": torch.are_deterministic_algorithms_enabled(), "cudnn_deterministic":
            torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark, **tf32}


def check_device_index(device: torch.device, count: int, visible: str | None) -> None:
    """ValueError when `cuda:N` names no GPU this process sees: N counts the `count` GPUs that
    CUDA_VISIBLE_DEVICES (`visible`, a scheduler slot's) leaves, not the machine's."""
    if device.type != "cuda" or device.index is None or device.index < count:
        return
    seen = f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    raise ValueError(f"device: expected cuda or cuda:0..cuda:{count - 1} (this process sees {count} GPU(s), "
                     f"{seen}; an index counts the visible GPUs, not the machine's), found {str(device)!r}")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(device: torch.device) -> dict:
    """The device's model: CPU name and bf16 answer (and whether BAN_FORCE_CPU_BF16 set it); on
    CUDA the GPU's name and the CUDA and cuDNN versions."""
    device = torch.device(device)
    out = {"device_type": device.type, "cpu": cpu_model(), "cpu_bf16": cpu_bf16_capable(),
           "cpu_bf16_forced": os.environ.get(FORCE_BF16)}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return out


def resolved(exp, device: torch.device) -> dict:
    """What each generation of `exp` (an engine.spec.Experiment) trains with on `device`:
    {"device_type", "generations": [{"precision", "channels_last", "compile"}, ...]}."""
    device = torch.device(device)
    gens = [{"precision": resolve_precision(g.training.precision, device, g.model),
             "channels_last": model_kind(g.model) != "lm" and channels_last(g.training.channels_last, device, g.model),
             "compile": bool(g.training.compile)} for g in exp.generations]
    return {"device_type": device.type, "generations": gens}
