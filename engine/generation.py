"""One generation of Born-Again training, for every task: the skeleton.

`train_generation(ctx, gen, teacher, task, resume) -> GenResult` builds the student of
generation `gen` (fresh from its own seed, then `inherit`ed parts copied from the teacher),
trains it for `gen.training.epochs` epochs on `gen.objective` and returns it with its metrics
and its test-set probabilities. What is the same for every task lives here: build + inherit,
the gen_start event, the objective/optimizer/precision parts, restoring checkpoints/last.pt,
the epoch loop's bookkeeping (running sums, the finite check, stopping on SIGTERM, the epoch
record, `end_epoch`, `save_last`) and the final evaluation (with the task's eval-mode error on
the training set, the fit criterion). What differs (batches, the steps of
one epoch, evaluation, ensemble metrics, the model's build arguments) comes from the task
(engine/tasks/: `image`, `lm`; the protocol is in engine/tasks/__init__.py).

Reproducibility: the student's initialisation comes from the generation's seed; each epoch's
order, augmentation and dropout from (seed, epoch) (the task's `begin_epoch`); DKPP's
permutations from a generator seeded by (seed, "dkpp") whose state is checkpointed. last.pt is
written after every epoch and, on SIGTERM, after the current step (the task says when it can
stop), with the global RNG state and the task's carried state (an LM's hidden states), so a
resumed generation continues where it stopped and ends with the same numbers.

Nothing per generation hides in the Context: the data is the task's, and where the generation
resumes is `resume` (a `Resume`: last.pt's contents, and whether gen_start is already written).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine import checkpoint, ddp, optim, spec
from engine.context import Context, derive_seed, describe
from engine.errors import Cancelled, ConfigError, RunError
from engine.runs import gen_label
from engine.tasks import Loop, Task


@dataclass(frozen=True)
class Resume:
    """Where a generation stands in its run directory before it trains."""
    last: dict | None = None     # checkpoints/last.pt of this generation: continue from it
    started: bool = False        # its gen_start event is already written


FRESH = Resume()


@dataclass
class GenResult:
    model: torch.nn.Module           # the trained student (unwrapped: no DDP, no compile)
    final: dict                      # the last epoch's metrics (the headline)
    val_min: dict                    # the minimum of each validation metric over the epochs (no test metric:
                                     # a minimum over epochs of a test number is selected on the test set)
    test_probs: np.ndarray | None    # float32 test-set probabilities for ensembles (None: none)
    seconds: float


@dataclass
class Parts:
    """What every step of a generation uses besides its batch (made once per generation)."""
    objective: object                # engine.objectives.OBJECTIVES[gen.objective]
    options: dict                    # its options (DKPP: with its generator)
    dkpp: torch.Generator | None     # DKPP's permutations (checkpointed), else None
    optimizer: torch.optim.Optimizer
    autocast: object                 # () -> the forward passes' autocast context
    scaler: torch.amp.GradScaler     # enabled for fp16 only


@dataclass
class Progress:
    """Where the epoch loop stands: after `epoch` finished epochs and `step` steps of the next."""
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)   # the epoch records so far
    val_min: dict = field(default_factory=dict)   # the minimum of each validation metric so far
    running: dict | None = None                   # the sums of the epoch in progress (step > 0)


# ---- before the loop ------------------------------------------------------------------------

def build_model(ctx: Context, gen: spec.Generation, task: Task) -> torch.nn.Module:
    """Generation gen's model for the task's data, freshly initialised from its seed (on the CPU)."""
    from engine import models
    torch.manual_seed(ctx.gen_seed(gen))
    try:
        return models.build(gen.model, **task.model_args(), **gen.model_options)
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        was = recorded_source(ctx, gen)
        made = (f" (this run was made with {was['package']} {was['version'] or '(no installed version)'} "
                f"from {was['origin']})") if was else ""
        raise ConfigError(f"{describe(gen)}: cannot build model {gen.model!r} for data set "
                          f"{ctx.exp.dataset.name!r}: {msg}{made}") from exc


def recorded_source(ctx: Context, gen: spec.Generation) -> dict | None:
    """What a reference model resolved to when this run's generation started (its gen_start)."""
    from engine import catalog
    from engine.events import read_events
    if not catalog.parse_reference(gen.model) or ctx.paths is None or not ctx.paths.events.is_file():
        return None
    return next((e["model_source"] for e in read_events(ctx.paths.events)
                 if e["kind"] == "gen_start" and e.get("gen") == gen.index and e.get("model_source")), None)


def check_source(ctx: Context, gen: spec.Generation) -> None:
    """A resumed generation of a reference model: warn when its package's version changed."""
    from engine import catalog
    was = recorded_source(ctx, gen)
    now = catalog.reference_versions(gen.model) if was else None
    if was and now["version"] != was["version"]:
        ctx.log(f"{describe(gen)}: model {gen.model!r} started with {was['package']} {was['version']}, "
                f"resumes with {now['version']}: the model may differ", "warning")


def build_student(ctx: Context, gen: spec.Generation, teacher, task: Task) -> torch.nn.Module:
    """The fresh student with the teacher's inherited parts, placed on the device by the task."""
    task.check(ctx, gen, describe(gen))
    model = build_model(ctx, gen, task)
    if gen.inherit:
        from engine.models.inherit import inherit
        try:
            inherit(model, teacher, gen.inherit, gen.freeze, gen.parts,
                    ctx.exp.generations[gen.teacher].parts if gen.teacher is not None else None)
        except ValueError as exc:
            raise ConfigError(f"{describe(gen)}: {exc}") from exc
    return task.place(ctx, gen, model)


def emit_gen_start(ctx: Context, gen: spec.Generation, model, **extra) -> None:
    from engine import catalog
    from engine.models import count_params
    t = gen.training
    if catalog.parse_reference(gen.model):
        extra["model_source"] = catalog.reference_versions(gen.model)
    ctx.emit("gen_start", gen=gen.index, role=gen.role, objective=gen.objective, model=gen.model,
             params=count_params(model), teacher=gen.teacher, epochs=t.epochs, seed=ctx.gen_seed(gen),
             batch_size=t.batch_size, lr=t.optimizer.lr, inherit=gen.inherit, freeze=gen.freeze, **extra)


def step_parts(gen: spec.Generation, model, seed: int, device: torch.device, rank: int = 0) -> Parts:
    """The objective and its options (DKPP's permutations from a CPU generator seeded by the
    generation and the DDP rank, so they are the same on any device and differ between ranks),
    the optimizer, autocast and loss scaling."""
    from engine.objectives import OBJECTIVES
    objective, options = OBJECTIVES[gen.objective], dict(gen.objective_options)
    dkpp = None
    if gen.objective == "dkpp":
        dkpp = torch.Generator().manual_seed(derive_seed(seed, "dkpp", *([rank] if rank else [])))
        options["generator"] = dkpp
    optimizer = optim.make_optimizer(model, gen.training.optimizer, device)
    dtype = optim.autocast_dtype(gen.training.precision, device, gen.model)
    return Parts(objective, options, dkpp, optimizer, optim.autocast(dtype, device), optim.grad_scaler(dtype, device))


def restore(ctx: Context, last: dict | None, model, parts: Parts) -> Progress:
    """The model, optimizer, loss scaler and this rank's DKPP generator as last.pt saved them, and
    where the loop stands. Under DDP rank 0 alone continues the saved running sums (they are global)."""
    if last is None:
        return Progress()
    model.load_state_dict(last["state_dict"])
    parts.optimizer.load_state_dict(last["optimizer"])
    optim.match_param_layout(parts.optimizer)
    if "scaler" in last:
        parts.scaler.load_state_dict(last["scaler"])
    own = checkpoint.own_rng_state(last, ctx.rank)
    if parts.dkpp is not None and own is not None and "dkpp" in own:
        parts.dkpp.set_state(own["dkpp"])
    running = last["running"] if last["step"] else None
    if running is not None and not ctx.main:
        running = {k: v if k == "seconds" else {d: 0.0 for d in v} if k == "diag" else type(v)(0)
                   for k, v in running.items()}
    return Progress(last["epoch"], last["step"], list(last["history"]), val_minima(last.get("val_min", last.get("best", {}))), running)


# ---- the loop's bookkeeping -----------------------------------------------------------------

def new_sums(keys) -> dict:
    """Running sums of an epoch: the task's sums (loss * n, errors, ...), samples, seconds, diagnostics."""
    return {**{k: 0.0 for k in keys}, "n": 0, "seconds": 0.0, "diag": {}}


def reduce_sums(sums: dict, device) -> dict:
    """The sums over all DDP ranks (seconds: rank 0's); the same numbers with one process."""
    keys = [k for k in sums if k not in ("seconds", "diag")]
    diag = sorted(sums["diag"])
    totals = ddp.all_reduce([sums[k] for k in keys] + [sums["diag"][k] for k in diag], device)
    out = {k: int(v) if k == "n" else v for k, v in zip(keys, totals)}
    return {**out, "seconds": sums["seconds"], "diag": dict(zip(diag, totals[len(keys):]))}


def save_last(ctx: Context, gen: spec.Generation, epoch: int, step: int, model, optimizer, history: list,
              val_min: dict, dkpp=None, saver: checkpoint.BackgroundSaver | None = None, then=None, **extra) -> None:
    """checkpoints/last.pt: everything to continue generation `gen` after `epoch` finished
    epochs and `step` steps of the next one, with every rank's RNG streams (a collective: every
    rank calls it); rank 0 writes it (temp file + rename), then calls `then`. With a `saver`
    the file is written from a snapshot in its background thread, else here and now."""
    rng = checkpoint.rank_rng_states(ctx.device, dkpp)
    if not ctx.main:
        return
    state = {"gen": gen.index, "epoch": epoch, "step": step, "state_dict": model.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": rng, "history": history, "val_min": val_min, **extra}
    if saver is not None:
        return saver.save(state, ctx.paths.last_checkpoint, then)
    checkpoint.save(state, ctx.paths.last_checkpoint)
    if then is not None:
        then()


def val_minima(metrics: dict) -> dict:
    """The validation metrics (val_*) of `metrics`: the only ones whose minimum over epochs may be
    kept (a checkpoint of an older run may hold the minima of every metric)."""
    return {k: v for k, v in metrics.items() if k.startswith("val_")}


def end_epoch(ctx: Context, record: dict, metrics: dict, history: list, val_min: dict, save, saved) -> None:
    """Book a finished epoch: its history entry, the minima of the validation metrics (updated
    in place, so that `save` writes them), then checkpoints/last.pt through `save(then)`, which emits the
    `epoch` event once the file is written (in the background: training goes on meanwhile). Saved
    before the event, so an event never announces an epoch that a crash could lose. `saved()`
    waits for that write; a HOLD (wait_while_held) calls it before it holds."""
    history.append(record)
    val_min.update({k: min(v, val_min.get(k, v)) for k, v in val_minima(metrics).items() if v is not None})
    save(lambda: ctx.emit("epoch", **record))
    wait_while_held(ctx, record["gen"], record["epoch"], saved)


HOLD_POLL_SECONDS = 0.2


def hold_point(text: str) -> tuple[int, int]:
    """Where a HOLD file holds from: "G E" holds after generation G's epoch E (counted from 1, as
    the epoch events count) and every epoch after it; anything else, an empty file included,
    holds after every epoch."""
    try:
        g, e = map(int, text.split())
        return g, e
    except ValueError:
        return 0, 0


def wait_while_held(ctx: Context, gen: int, epoch: int, saved) -> None:
    """Pause here, after an epoch's checkpoint and event, while a HOLD file exists
    (RunPaths.holds: the run's own, or its experiment's) whose hold point (`hold_point`) this
    epoch has reached: a `log` event says so once, heartbeats go on. SIGTERM while held cancels
    (last.pt is written: the run resumes at the next epoch), unless the file is gone by then,
    when the run goes on to its next stop check as usual. The stop flag is read before the file,
    so a test that removes the file and then signals always sees the run stop mid-epoch.
    A user's pause without losing the process, and the gate with which the tests act on a chain
    that is running by construction, whatever the CPU's speed. Every rank waits alike."""
    def held() -> bool:
        for f in ctx.paths.holds():
            try:
                if (gen, epoch) >= hold_point(f.read_text()):
                    return True
            except OSError:
                pass
        return False

    if not ctx.agree(held(), False)[0]:
        return
    saved()   # the background last.pt written and its epoch event out before the run says it is held
    where = f"epoch {epoch} of generation {gen} ({gen_label(gen)})"
    ctx.log(f"held after {where}: waiting while "
            f"{' or '.join(str(f) for f in ctx.paths.holds())} exists")
    while True:
        stop, holding = ctx.agree(ctx.stop.is_set(), held())   # in this order: see above
        if not holding:
            break
        if stop:
            raise Cancelled(f"stopped while held after {where}")
        time.sleep(HOLD_POLL_SECONDS)
    ctx.log(f"released after {where}")


def check_finite(ctx: Context, stop: bool, value: float, where: str, epoch: int, step: int) -> bool:
    """Raise RunError when the loss is nan/inf on any rank; return the agreed stop flag.
    `epoch` and `step` count from 1 (as the message shows them)."""
    stop, bad = ctx.agree(stop, not math.isfinite(value))
    if bad:
        what = "nan" if math.isnan(value) else "inf" if math.isinf(value) else "non-finite (on another rank)"
        raise RunError(f"{where}: loss became {what} at epoch {epoch} step {step}")
    return stop


@dataclass
class Generation:
    """One generation in training: what the skeleton's steps below share."""
    ctx: Context
    gen: spec.Generation
    task: Task
    loop: Loop                       # the task's per-generation part
    model: torch.nn.Module
    parts: Parts
    schedule: optim.LRSchedule
    progress: Progress
    last: dict | None                # last.pt when the generation resumed
    saver: checkpoint.BackgroundSaver = field(default_factory=checkpoint.BackgroundSaver)

    def save(self, epoch: int, step: int, sums: dict | None, carry=None, then=None, background=False) -> None:
        extra = {"schedule": self.schedule.state_dict(), "scaler": self.parts.scaler.state_dict(),
                 "running": sums, **self.loop.carry_state(carry)}
        p = self.progress
        self.saver.wait()   # one last.pt at a time, in order
        save_last(self.ctx, self.gen, epoch, step, self.model, self.parts.optimizer, p.history, p.val_min,
                  self.parts.dkpp, self.saver if background else None, then, **extra)

    def train_epoch(self, epoch: int, skip: int, sums: dict, carry) -> dict:
        """The epoch's steps from `skip` on, as the task runs them; at each of the task's
        read-backs the finite check and, when SIGTERM asked on any rank, last.pt and Cancelled.
        Returns the epoch's sums over every rank."""
        ctx, steps, t0 = self.ctx, self.loop.steps, time.perf_counter()
        lr_at = lambda i: self.schedule(epoch * steps + i)   # noqa: E731
        for done, losses, carry in self.loop.train(epoch, skip, sums, carry, lr_at):
            step, value = next(((i, v) for i, v in losses if not math.isfinite(v)), losses[-1])
            if check_finite(ctx, ctx.stop.is_set(), value, describe(self.gen), epoch + 1, step):
                sums["seconds"] += time.perf_counter() - t0
                self.save(epoch, done, reduce_sums(sums, ctx.device), carry)
                raise Cancelled(f"{describe(self.gen)}: stopped at epoch {epoch + 1} step {done}")
        sums["seconds"] += time.perf_counter() - t0
        return reduce_sums(sums, ctx.device)

    def run_epoch(self, epoch: int):
        """Train, evaluate and book one epoch; the test probabilities when it is the last."""
        t, p = self.gen.training, self.progress
        self.loop.begin_epoch(epoch)
        sums, carry = new_sums(self.task.sums), None
        if p.running is not None:   # continuing mid-epoch: the RNG and the task's state as they were at the stop
            sums, carry = p.running, self.loop.restore_carry(self.last)
            checkpoint.set_rng_state(checkpoint.own_rng_state(self.last, self.ctx.rank), self.ctx.device)
        skip, p.running = p.step, None
        sums = self.train_epoch(epoch, skip, sums, carry)
        p.step = 0
        train_seconds, n = sums["seconds"], sums["n"]
        lr = self.schedule(epoch * self.loop.steps + self.loop.steps - 1)   # the epoch's last step's
        t1 = time.perf_counter()
        metrics, probs = self.loop.evaluate(sums, keep_probs=epoch == t.epochs - 1)
        seconds = train_seconds + time.perf_counter() - t1
        self.schedule.epoch_end(self.task.plateau_metric(metrics))
        from engine.objectives import summarize_diagnostics
        record = {"gen": self.gen.index, "epoch": epoch + 1, "epochs": t.epochs, **metrics, "lr": lr,
                  "seconds": round(seconds, 3), **self.task.throughput(n, train_seconds),
                  "diagnostics": summarize_diagnostics(sums["diag"]) if sums["diag"] else {}}
        end_epoch(self.ctx, record, metrics, p.history, p.val_min,
                  lambda then: self.save(epoch + 1, 0, None, then=then, background=True), self.saver.wait)
        return probs

    def result(self, probs) -> GenResult:
        """The final evaluation: the last epoch's metrics with the task's fit criterion (the
        training set in eval mode, `Loop.fit`), and the test probabilities (again when the
        generation resumed after its last epoch had been saved). Both are functions of the
        trained weights, so a resumed generation ends with the same numbers."""
        history = self.progress.history
        if probs is None:
            probs = self.loop.test_probs()
        final = {**{k: history[-1][k] for k in self.task.metrics if k in history[-1]}, **self.loop.fit()}
        return GenResult(self.model, final, self.progress.val_min, probs, sum(h["seconds"] for h in history))


def train_generation(ctx: Context, gen: spec.Generation, teacher, task: Task, resume: Resume = FRESH) -> GenResult:
    """Train generation `gen` of ctx.exp on the task's data, from scratch or from resume.last."""
    model = build_student(ctx, gen, teacher, task)
    if not resume.started:
        emit_gen_start(ctx, gen, model, **task.gen_start_extra())
    else:
        check_source(ctx, gen)
    parts = step_parts(gen, model, ctx.gen_seed(gen), ctx.device, ctx.rank)
    progress = restore(ctx, resume.last, model, parts)
    loop = task.start(ctx, gen, model, teacher, parts)
    t = gen.training
    schedule = optim.LRSchedule(t.schedule, t.optimizer.lr, t.epochs, loop.steps)
    if resume.last is not None:
        schedule.load_state_dict(resume.last["schedule"])
    g = Generation(ctx, gen, task, loop, model, parts, schedule, progress, resume.last)
    probs = None
    try:
        for epoch in range(progress.epoch, t.epochs):
            probs = g.run_epoch(epoch)
    finally:
        g.saver.wait()   # the last epoch's last.pt and event, before gen_end (or the error) follows
    return g.result(probs)
