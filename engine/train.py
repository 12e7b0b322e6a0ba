"""One generation of Born-Again training on an image data set: one flat SGD loop.

`train_generation(ctx, gen, teacher_model) -> GenResult` builds the student of generation `gen`
(fresh from its own seed, then `inherit`ed parts copied from the teacher), trains it for
`gen.training.epochs` epochs on `gen.objective` and returns it with its metrics and its test-set
softmax probabilities. The chain (engine/chain.py) loads the teacher, saves what comes back and
builds ensembles; engine/train_lm.py trains language models with the same signature and shares
`Context`, `LRSchedule`, `make_optimizer`, `save_last` and the errors below.

Per step: the student's forward on the augmented batch; the teacher's forward on the same batch,
in eval mode under inference_mode and the same precision (or its cached logits, see
`teacher_outputs`); the objective; backward; SGD. Train loss/err and the gradient diagnostics are
running sums over the epoch, from the logits the step already has (no extra forward pass).
After each epoch: val (if any) and test loss/err, an `epoch` event and `checkpoints/last.pt`.
The headline is the last epoch's test error; the test set never chooses anything.

Reproducibility: the student's initialisation comes from the generation's seed; each epoch's
order and augmentation from (seed, epoch) (`Batches.set_epoch`); dropout from a torch seed
derived from (seed, epoch); DKPP's permutations from a generator seeded by (seed, "dkpp") whose
state is checkpointed. last.pt is written after every epoch and, on SIGTERM, after the current
step, so a resumed generation continues where it stopped and ends with the same numbers.

DDP (torchrun, world_size > 1): every rank draws the same global batch of `batch_size` and
trains on its 1/world_size slice; the loss is weighted so that DDP's gradient average equals the
one-process gradient of the global batch. BatchNorm statistics (so CWTM's batches too) and
DKPP's permutations are per rank: each rank normalises and permutes its own slice, as DDP
training usually does. Running BN statistics are taken from rank 0 before every evaluation.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine import checkpoint, ddp, hardware, spec
from engine.events import EventWriter
from engine.runs import RunPaths, gen_label


class ConfigError(Exception):
    """The experiment cannot run as written (model, data, checkpoint shapes): exit status 2."""


class RunError(Exception):
    """Training went wrong (a non-finite loss): exit status 1."""


class Cancelled(Exception):
    """SIGTERM/SIGINT: the step finished and last.pt holds everything needed to resume."""


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any tuple of ints and strings (the same in every process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


@dataclass
class Context:
    """What every generation of one run shares; made by engine/__main__.py, filled by the chain."""
    exp: spec.Experiment
    seed: int                          # the chain's seed
    paths: RunPaths
    device: torch.device
    data: object = None                # engine.data.ImageData or engine.data.ptb.Corpus
    events: EventWriter | None = None  # None on DDP ranks other than 0: they write nothing
    stop: threading.Event = field(default_factory=threading.Event)   # set by SIGTERM/SIGINT
    resume: dict | None = None         # last.pt of the generation being continued
    started: set = field(default_factory=set)   # generations whose gen_start is in the events
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def emit(self, kind: str, **payload) -> None:
        if self.events is not None:
            self.events.emit(kind, **payload)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def gen_seed(self, gen: spec.Generation) -> int:
        return gen.seed if gen.seed is not None else derive_seed(self.seed, "gen", gen.index)

    def gen_start(self, gen: spec.Generation, model: torch.nn.Module, **extra) -> None:
        """The gen_start event, once per generation even across resumes."""
        if gen.index in self.started:
            return
        from engine.models import count_params
        self.started.add(gen.index)
        t = gen.training
        self.emit("gen_start", gen=gen.index, role=gen.role, objective=gen.objective, model=gen.model,
                  params=count_params(model), teacher=gen.teacher, epochs=t.epochs, seed=self.gen_seed(gen),
                  batch_size=t.batch_size, lr=t.optimizer.lr, inherit=gen.inherit, freeze=gen.freeze, **extra)

    def agree(self, stop: bool, bad: bool) -> tuple[bool, bool]:
        """(stop, bad) true on any rank: every rank stops, or fails, at the same step."""
        if self.world_size == 1:
            return stop, bad
        s, b = ddp.all_reduce([float(stop), float(bad)], self.device, op="max")
        return bool(s), bool(b)

    def should_stop(self) -> bool:
        return self.agree(self.stop.is_set(), False)[0]


@dataclass
class GenResult:
    model: torch.nn.Module           # the trained student (unwrapped: no DDP, no compile)
    final: dict                      # the last epoch's metrics (the headline)
    best: dict                       # the minimum of each metric over the epochs
    test_probs: np.ndarray | None    # float32 test-set probabilities for ensembles (None: none)
    seconds: float


METRICS = ("train_loss", "train_err", "val_loss", "val_err", "test_loss", "test_err")
# Steps between read-backs of the training loss, errors and diagnostics: each read-back waits for
# the GPU (a host sync), which per step would leave it idle while Python queues the next step.
READ_BACK_STEPS = 25


# ---- optimisation ---------------------------------------------------------------------------

def make_optimizer(model: torch.nn.Module, o: spec.Optimizer, device: torch.device) -> torch.optim.SGD:
    """SGD over the trainable parameters only: frozen inherited parts get no update and no
    weight decay. Fused on CUDA (one kernel for all parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov and o.momentum > 0, fused=True if device.type == "cuda" else None)


class LRSchedule:
    """The learning rate of every step (counted from 0 over the whole generation).

    constant; multistep: x gamma from each milestone epoch on; cosine: from lr to 0 over the
    steps after the warmup; plateau: x gamma after an epoch whose monitored metric (validation
    loss, else the training loss; never the test set) improved on the previous epoch's by less
    than `threshold`; onecycle: a linear rise from lr/25 over `warmup_epochs` (default 30% of
    training), then the cosine. The others warm up linearly from 0 over `warmup_epochs`.
    Step-based shapes change the rate every step, epoch-based ones at epoch boundaries.
    """

    def __init__(self, schedule: spec.Schedule, lr: float, epochs: int, steps_per_epoch: int):
        self.s, self.lr, self.steps_per_epoch = schedule, lr, max(steps_per_epoch, 1)
        self.total = epochs * self.steps_per_epoch
        warm = schedule.warmup_epochs or (0.3 * epochs if schedule.name == "onecycle" else 0.0)
        self.warmup = min(round(warm * self.steps_per_epoch), self.total)
        self.scale, self.prev = 1.0, None   # plateau state

    def __call__(self, step: int) -> float:
        s = self.s
        if step < self.warmup:
            start = 1 / 25 if s.name == "onecycle" else 0.0
            ramp = start + (1 - start) * (step + 1) / self.warmup
        else:
            ramp = 1.0
        if s.name in ("cosine", "onecycle"):
            t = (step - self.warmup) / max(self.total - self.warmup, 1) if step >= self.warmup else 0.0
            shape = 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        elif s.name == "multistep":
            epoch = step // self.steps_per_epoch
            shape = s.gamma ** sum(epoch >= m for m in s.milestones)
        else:  # constant, plateau
            shape = 1.0
        return self.lr * ramp * shape * self.scale

    def epoch_end(self, metric: float) -> None:
        if self.s.name == "plateau":
            if self.prev is not None and self.prev - metric < self.s.threshold:
                self.scale *= self.s.gamma
            self.prev = metric

    def state_dict(self) -> dict:
        return {"scale": self.scale, "prev": self.prev}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.prev = state["scale"], state["prev"]


def autocast_dtype(precision: str, device: torch.device, model: str | None = None):
    """auto: engine.hardware.resolve_precision. None means plain fp32 (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[hardware.resolve_precision(precision, device, model)]


def save_last(ctx: Context, gen: spec.Generation, epoch: int, step: int, model, optimizer, history: list,
              best: dict, **extra) -> None:
    """checkpoints/last.pt: everything to continue generation `gen` after `epoch` finished
    epochs and `step` steps of the next one (rank 0 only; temp file + rename)."""
    if ctx.main:
        checkpoint.save({"gen": gen.index, "epoch": epoch, "step": step, "state_dict": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "rng": checkpoint.rng_state(),
                         "history": history, "best": best, **extra}, ctx.paths.last_checkpoint)


def step_parts(gen: spec.Generation, model, seed: int, device: torch.device):
    """What every trainer (image or language) builds before its loop: the objective and its
    options (DKPP's permutations from a CPU generator seeded by the generation, so they are the
    same on any device), the optimizer, the autocast dtype and context.
    Returns (objective, options, dkpp generator or None, optimizer, dtype or None, autocast)."""
    from engine.objectives import OBJECTIVES
    objective, options = OBJECTIVES[gen.objective], dict(gen.objective_options)
    dkpp = None
    if gen.objective == "dkpp":
        dkpp = torch.Generator().manual_seed(derive_seed(seed, "dkpp"))
        options["generator"] = dkpp
    optimizer = make_optimizer(model, gen.training.optimizer, device)
    dtype = autocast_dtype(gen.training.precision, device, gen.model)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    return objective, options, dkpp, optimizer, dtype, autocast


def end_epoch(ctx: Context, record: dict, metrics: dict, history: list, best: dict, save) -> None:
    """Book a finished epoch: its history entry, the per-metric minima (updated in place, so
    that `save` writes them), checkpoints/last.pt through `save()`, then the `epoch` event.
    Saved before the event, so an event never announces an epoch that a crash could lose."""
    history.append(record)
    best.update({k: min(v, best.get(k, v)) for k, v in metrics.items()})
    save()
    ctx.emit("epoch", **record)


def check_finite(ctx: Context, stop: bool, value: float, where: str, epoch: int, step: int) -> bool:
    """Raise RunError when the loss is nan/inf on any rank; return the agreed stop flag.
    `epoch` and `step` count from 1 (as the message shows them)."""
    stop, bad = ctx.agree(stop, not math.isfinite(value))
    if bad:
        what = "nan" if math.isnan(value) else "inf" if math.isinf(value) else "non-finite (on another rank)"
        raise RunError(f"{where}: loss became {what} at epoch {epoch} step {step}")
    return stop


# ---- models ---------------------------------------------------------------------------------

def build_model(ctx: Context, gen: spec.Generation) -> torch.nn.Module:
    """Generation gen's model, freshly initialised from its seed (on the CPU)."""
    from engine import models
    torch.manual_seed(ctx.gen_seed(gen))
    try:
        return models.build(gen.model, ctx.data.num_classes, ctx.data.in_channels, **gen.model_options)
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ConfigError(f"generation {gen.index} ({gen_label(gen.index)}): cannot build model "
                          f"{gen.model!r} for data set {ctx.exp.dataset.name!r}: {msg}") from exc


def teacher_outputs(teacher, batches, n: int, autocast) -> torch.Tensor:
    """The teacher's logits [n, C] for every training sample, by sample index.

    The cache design: with augmentation off a sample's input is the same every epoch, and the
    teacher is in eval mode, so its logits are a function of the sample index: computed once
    here, they equal recomputing them at every step (up to the float rounding of a different
    batch composition). With augmentation on, a sample's crop differs every epoch, so a cache
    would hold each entry for one use: the loop then recomputes instead (and says so).
    """
    with torch.inference_mode():
        out = None
        for x, idx in batches:
            with autocast():
                z = teacher(x).float()
            if out is None:
                out = torch.empty(n, z.shape[1], device=z.device)
            out[idx] = z
    return out.clone()  # a normal tensor, usable outside inference mode


@torch.inference_mode()
def evaluate(net, batches, autocast, keep_probs: bool = False):
    """(mean cross-entropy, error rate, softmax probabilities [N, C] float32 or None)."""
    net.eval()
    loss = err = 0.0
    probs = []
    for x, y in batches:
        with autocast():
            logits = net(x)
        logits = logits.float()
        loss = loss + F.cross_entropy(logits, y, reduction="sum")
        err = err + (logits.argmax(1) != y).sum()
        if keep_probs:
            probs.append(F.softmax(logits, dim=1).cpu())
    n = len(batches.x)
    loss, err = torch.stack([torch.as_tensor(loss).float(), torch.as_tensor(err).float()]).tolist()
    return loss / n, err / n, (torch.cat(probs).numpy().astype(np.float32) if keep_probs else None)


def ensemble_metrics(ctx: Context, member_probs: list) -> dict:
    """Ens*k: the mean of the members' softmax outputs (probabilities, not logits); its error and
    its test loss (the NLL of the mean probabilities)."""
    p = np.mean(np.stack([np.asarray(m, dtype=np.float64) for m in member_probs]), axis=0)
    y = ctx.data.test_y.numpy()
    p_true = np.clip(p[np.arange(len(y)), y], 1e-12, None)
    return {"test_err": float(np.mean(p.argmax(axis=1) != y)), "test_loss": float(-np.mean(np.log(p_true)))}


def new_sums() -> dict:
    """Running sums of an epoch: objective loss * n, errors, samples, seconds, diagnostics."""
    return {"loss": 0.0, "err": 0.0, "n": 0, "seconds": 0.0, "diag": {}}


def reduce_sums(sums: dict, device) -> dict:
    """The sums over all DDP ranks (seconds: rank 0's); the same dict with one process."""
    keys = sorted(sums["diag"])
    totals = ddp.all_reduce([sums["loss"], sums["err"], sums["n"]] + [sums["diag"][k] for k in keys], device)
    return {"loss": totals[0], "err": totals[1], "n": int(totals[2]), "seconds": sums["seconds"],
            "diag": dict(zip(keys, totals[3:]))}


# ---- the loop -------------------------------------------------------------------------------

def train_generation(ctx: Context, gen: spec.Generation, teacher_model) -> GenResult:
    from engine.data import Batches
    from engine.objectives import diagnostic_sums, summarize_diagnostics

    t, data, device = gen.training, ctx.data, ctx.device
    where = f"generation {gen.index} ({gen_label(gen.index)})"
    seed = ctx.gen_seed(gen)
    model = build_model(ctx, gen)
    if gen.inherit:
        from engine.models.inherit import inherit
        try:
            inherit(model, teacher_model, gen.inherit, gen.freeze)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    channels_last = hardware.channels_last(t.channels_last, device, gen.model)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    ctx.gen_start(gen, model)

    objective, options, dkpp, optimizer, dtype, autocast = step_parts(gen, model, seed, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    # Batches yield sample indices as their "labels": labels and cached teacher logits are
    # looked up by index. Under DDP the last, short global batch is dropped only when it
    # cannot give every rank a sample.
    n_train = len(data.train_x)
    drop_last = ctx.world_size > 1 and 0 < n_train % t.batch_size < ctx.world_size

    def batches(x, y, batch_size, train):
        return Batches(x, y, batch_size, data.mean, data.std, shuffle=train, augment=train and ctx.exp.dataset.augment,
                       seed=seed, device=device, drop_last=train and drop_last, channels_last=channels_last,
                       rank=ctx.rank if train else 0, world_size=ctx.world_size if train else 1)
    train = batches(data.train_x, torch.arange(n_train), t.batch_size, True)
    train_y = data.train_y.to(device)
    test = batches(data.test_x, data.test_y, t.eval_batch_size, False)
    val = batches(data.val_x, data.val_y, t.eval_batch_size, False) if data.val_x is not None else None
    steps = len(train)
    schedule = LRSchedule(t.schedule, t.optimizer.lr, t.epochs, steps)

    teacher, cache = teacher_model, None
    if teacher is not None:
        teacher.eval().to(device, memory_format=memory_format)
        if t.teacher_cache and train.augment:
            ctx.log(f"{where}: teacher_cache has no effect with augmentation (every epoch crops and "
                    "flips each image anew); computing the teacher's outputs at every step", "warning")
        elif t.teacher_cache:
            cache = teacher_outputs(teacher, batches(data.train_x, torch.arange(n_train), t.eval_batch_size, False),
                                    n_train, autocast)

    start_epoch, skip, history, best, running = 0, 0, [], {}, None
    if ctx.resume is not None:
        r = ctx.resume
        model.load_state_dict(r["state_dict"])
        optimizer.load_state_dict(r["optimizer"])
        schedule.load_state_dict(r["schedule"])
        scaler.load_state_dict(r["scaler"])
        if dkpp is not None:
            dkpp.set_state(r["dkpp"])
        start_epoch, skip, history, best = r["epoch"], r["step"], list(r["history"]), dict(r["best"])
        running = r["running"] if skip else None
        if running is not None and not ctx.main:
            running = {**running, "loss": 0.0, "err": 0.0, "n": 0, "diag": {k: 0.0 for k in running["diag"]}}

    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)
        teacher = torch.compile(teacher) if teacher is not None and cache is None else teacher
    eval_net = net if ctx.world_size == 1 else model

    def last(epoch, step, sums):
        extra = {"schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "running": sums}
        if dkpp is not None:
            extra["dkpp"] = dkpp.get_state()
        save_last(ctx, gen, epoch, step, model, optimizer, history, best, **extra)

    def read_back(window, sums, stop, epoch) -> bool:
        """Add the window's per-step numbers to the epoch's sums, step by step as they were made
        (one host sync for the whole window); RunError naming the first non-finite loss's step on
        any rank; the stop flag agreed by every rank."""
        rows = torch.stack([v for *_, v in window]).tolist()
        bad = next((i for i, r in enumerate(rows) if not math.isfinite(r[0])), len(rows) - 1)
        stop = check_finite(ctx, stop, rows[bad][0], where, epoch + 1, window[bad][0] + 1)
        for (_, n, keys, _), (loss_value, errors, *diag) in zip(window, rows):
            sums["loss"] += loss_value * n
            sums["err"] += errors
            sums["n"] += n
            sums["diag"]["n"] = sums["diag"].get("n", 0) + n
            for k, v in zip(keys, diag):
                sums["diag"][k] = sums["diag"].get(k, 0) + (round(v) if k == "teacher_agree" else v)
        return stop

    probs = None
    for epoch in range(start_epoch, t.epochs):
        train.set_epoch(epoch)
        torch.manual_seed(derive_seed(seed, "epoch", epoch, ctx.rank))
        sums = running if running is not None else new_sums()
        if running is not None:   # continuing mid-epoch: the RNG as it was at the stop
            checkpoint.set_rng_state(ctx.resume["rng"])
        running = None
        lr = schedule(epoch * steps + min(skip, steps - 1))
        window = []   # (step, batch size, diagnostic keys, [loss, errors, *diagnostics]) not yet read back
        net.train()
        t0 = time.perf_counter()
        for step, (x, idx) in enumerate(itertools.islice(train, skip, None), start=skip):
            lr = schedule(epoch * steps + step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            labels = train_y[idx]
            with autocast():
                logits = net(x)
                if cache is not None:
                    t_logits = cache[idx]
                elif teacher is not None:
                    with torch.inference_mode():
                        t_logits = teacher(x)
                else:
                    t_logits = None
            loss = objective(logits.float(), t_logits, labels, **options)
            # DDP averages the ranks' gradients: weight each rank's mean by its share of the batch
            # so that the average is the gradient of the global batch's mean loss.
            n_global = min(t.batch_size, n_train - step * t.batch_size)
            weight = len(labels) * ctx.world_size / n_global if ctx.world_size > 1 else 1.0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():   # the step's numbers stay on the device until the next read-back
                diag = diagnostic_sums(logits.detach().float(), t_logits, labels, gen.objective, **options)
                window.append((step, len(labels), list(diag), torch.stack(
                    [loss.detach().float(), (logits.argmax(1) != labels).sum().float(), *diag.values()])))
            # Read back every READ_BACK_STEPS steps (the same steps on every rank), at the epoch's
            # end and, with one process, as soon as SIGTERM asks; ranks stop together at a read-back.
            if len(window) == READ_BACK_STEPS or step + 1 == steps or (ctx.world_size == 1 and ctx.stop.is_set()):
                stop = read_back(window, sums, ctx.stop.is_set(), epoch)
                window = []
                if stop:   # last.pt holds the global running sums; rank 0 continues them
                    sums["seconds"] += time.perf_counter() - t0
                    last(epoch, step + 1, reduce_sums(sums, device))
                    raise Cancelled(f"{where}: stopped at epoch {epoch + 1} step {step + 1}")
        skip = 0
        sums["seconds"] += time.perf_counter() - t0
        sums = reduce_sums(sums, device)
        train_seconds, n = sums["seconds"], sums["n"]

        ddp.broadcast_buffers(model)
        t1 = time.perf_counter()
        metrics = {"train_loss": sums["loss"] / n, "train_err": sums["err"] / n}
        if val is not None:
            metrics["val_loss"], metrics["val_err"], _ = evaluate(eval_net, val, autocast)
        final_epoch = epoch == t.epochs - 1
        metrics["test_loss"], metrics["test_err"], probs = evaluate(eval_net, test, autocast, keep_probs=final_epoch)
        seconds = train_seconds + time.perf_counter() - t1
        schedule.epoch_end(metrics.get("val_loss", metrics["train_loss"]))
        record = {"gen": gen.index, "epoch": epoch + 1, "epochs": t.epochs, **metrics, "lr": lr,
                  "seconds": round(seconds, 3), "samples": n, "samples_per_s": round(n / max(train_seconds, 1e-9), 1),
                  "diagnostics": summarize_diagnostics(sums["diag"])}
        end_epoch(ctx, record, metrics, history, best, lambda: last(epoch + 1, 0, None))

    if probs is None:   # resumed after the last epoch had been saved: evaluate the test set again
        _, _, probs = evaluate(eval_net, test, autocast, keep_probs=True)
    final = {k: history[-1][k] for k in METRICS if k in history[-1]}
    return GenResult(model, final, best, probs, sum(h["seconds"] for h in history))
