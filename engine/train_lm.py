"""One language-model generation: truncated-BPTT training of a word-level LM (BAN paper, 4.3).

The chain (engine/chain.py) calls `build_model(ctx, gen)`, `train_generation(ctx, gen, teacher)`
and `ensemble_metrics(ctx, member_probs)` here exactly as it calls engine/train.py for images,
and shares its Context, GenResult, optimiser, learning-rate schedule, checkpoint and errors.

The objectives are the image ones, applied token by token: logits [T, B, V] are flattened to
[T*B, V] and targets to [T*B]. Teacher and student read the same windows and each carries its
own hidden state from window to window (detached, so gradients stop at the window edge); the
teacher runs in eval mode under inference_mode, so its dropout is off.

Optimisation as in Zaremba et al. / Kim et al.: SGD (set momentum = 0, weight_decay = 0 in the
config for the papers' plain SGD) on the loss of each window *summed over its time steps* and
averaged over the batch (their convention: the per-token mean times the window length), so that
their learning rates (1, 2) and clipping norms (5, 10) mean the same here; the reported losses
are per-token means. Gradient-norm clipping (`training.grad_clip`), and the
learning rate multiplied by `schedule.gamma` after an epoch whose validation perplexity improved
on the previous epoch's by less than `schedule.threshold` (schedule "plateau", which here watches
validation *perplexity*; LSTM: lr 1, x0.25; CNN-LSTM: lr 2, x0.5, threshold 0.5).

Epoch events: train_loss (the objective), train_ppl (exp of the label cross-entropy during
training, dropout on), val_loss/val_ppl, test_loss/test_ppl (mean cross-entropy per predicted
token in nats, and its exp), lr, seconds, tokens_per_s, diagnostics (eq. 7-10, sampled on every
DIAG_EVERY-th window: the full-vocabulary gradient split costs a few softmaxes per call).

Test probabilities for ensembles: an ensemble's next-word distribution is the mean of its
members' distributions, so its probability of the actual next word is the mean of the members'
probabilities of that word. Storing, per generation, each test position's probability of the
correct next token (probs/gen-<k>.npy: float32 [T_test], in stream order, see
`ptb.predicted_tokens`; image runs store [N, C]) is therefore enough for the exact ensemble
perplexity exp(-mean(log(mean_k p_k))) (`ensemble_metrics`). Members must share eval_batch_size
and bptt, so that they predict the same positions.

Resume: windows are read in order, so a generation stopped mid-epoch saves both hidden states
with last.pt and continues with the next window.
"""
from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine import checkpoint, optim
from engine.data.ptb import batchify, windows
from engine.errors import Cancelled, ConfigError
from engine.optim import LRSchedule
from engine.runs import gen_label
from engine.train import GenResult, check_finite, derive_seed, end_epoch, save_last, step_parts

METRICS = ("train_loss", "train_ppl", "val_loss", "val_ppl", "test_loss", "test_ppl")
DIAG_EVERY = 10


def detach(hidden):
    return tuple(h.detach() for h in hidden)


def ppl(loss: float) -> float:
    """Perplexity of a mean per-token cross-entropy in nats (inf instead of an overflow)."""
    return math.exp(loss) if loss < 700 else float("inf")


@dataclass
class Step:
    index: int                   # window number within the epoch, from 0
    loss: float                  # the objective, mean over the window's tokens
    ce: float                    # label cross-entropy, mean over the window's tokens
    n: int                       # tokens predicted
    logits: torch.Tensor         # [n, V], detached
    teacher_logits: torch.Tensor | None
    labels: torch.Tensor
    hidden: tuple                # the states to carry into the next window
    teacher_hidden: tuple | None


def train_windows(model, columns, bptt, optimizer, objective, options=None, teacher=None, grad_clip=None,
                  autocast=nullcontext, scaler=None, lr_at=None, skip=0, hidden=None, teacher_hidden=None):
    """One training pass over the columns [L, B], a step per BPTT window, yielding a `Step` after
    each. Starts at window `skip` with the given hidden states (default zeros); `lr_at(i)` sets
    the learning rate of window i."""
    options = options or {}
    model.train()
    batch = columns.size(1)
    hidden = model.init_hidden(batch) if hidden is None else hidden
    if teacher is not None and teacher_hidden is None:
        teacher_hidden = teacher.init_hidden(batch)
    for i, (x, y) in enumerate(itertools.islice(windows(columns, bptt), skip, None), start=skip):
        if lr_at is not None:
            optim.set_lr(optimizer, lr_at(i))
        hidden = detach(hidden)
        labels = y.reshape(-1)
        teacher_logits = None
        with autocast():
            if teacher is not None:
                with torch.inference_mode():
                    teacher_logits, teacher_hidden = teacher(x, teacher_hidden)
                teacher_logits = teacher_logits.reshape(-1, teacher_logits.size(-1))
            logits, hidden = model(x, hidden)
        logits = logits.reshape(-1, logits.size(-1)).float()
        loss = objective(logits, teacher_logits, labels, **options)
        optimizer.zero_grad(set_to_none=True)
        window_loss = loss * x.size(0)    # summed over time steps, mean over the batch (see above)
        if scaler is None:
            window_loss.backward()
        else:
            scaler.scale(window_loss).backward()
            scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        logits = logits.detach()
        with torch.no_grad():
            loss_value, ce = torch.stack([loss.detach().float(), F.cross_entropy(logits, labels)]).tolist()
        yield Step(i, loss_value, ce, labels.numel(), logits, teacher_logits, labels, hidden, teacher_hidden)


def train_epoch(model, columns, bptt, optimizer, objective, options=None, teacher=None, grad_clip=None):
    """(mean objective loss, mean label cross-entropy) of one pass over the columns."""
    loss = ce = n = 0
    for s in train_windows(model, columns, bptt, optimizer, objective, options, teacher, grad_clip):
        loss, ce, n = loss + s.loss * s.n, ce + s.ce * s.n, n + s.n
    return loss / n, ce / n


@torch.inference_mode()
def evaluate(model, columns, bptt, keep_probs=False, autocast=nullcontext):
    """(mean cross-entropy per predicted token, probabilities of the correct next tokens [N] in
    stream order or None). The hidden state is carried across windows, as in training."""
    model.eval()
    hidden = model.init_hidden(columns.size(1))
    logp_target = []
    for x, y in windows(columns, bptt):
        with autocast():
            logits, hidden = model(x, hidden)
        logp = F.log_softmax(logits.float(), dim=-1)
        logp_target.append(logp.gather(-1, y.unsqueeze(-1)).squeeze(-1))      # [t, B]
    logp_target = torch.cat(logp_target).t().reshape(-1)                      # stream order
    loss = float(-logp_target.mean())
    return loss, (logp_target.exp().float().cpu().numpy() if keep_probs else None)


def ensemble_metrics(ctx, member_probs) -> dict:
    """Test loss and perplexity of an ensemble from its members' per-token probabilities of the
    correct next word (each a float vector [T_test], the same positions for every member)."""
    probs = [np.asarray(p, dtype=np.float64) for p in member_probs]
    if len({p.shape for p in probs}) != 1 or probs[0].ndim != 1:
        raise ValueError(f"ensemble: expected every member's probabilities of the same test tokens, found shapes "
                         f"{[p.shape for p in probs]} (use one eval_batch_size and bptt for all generations)")
    loss = float(-np.mean(np.log(np.clip(np.mean(probs, axis=0), 1e-300, None))))
    return {"test_loss": loss, "test_ppl": ppl(loss)}


def build_model(ctx, gen) -> torch.nn.Module:
    """Generation gen's model for the corpus' vocabulary, freshly initialised from its seed."""
    from engine import models
    torch.manual_seed(ctx.gen_seed(gen))
    try:
        return models.build(gen.model, ctx.data.num_classes, vocab=ctx.data.vocab, **gen.model_options)
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ConfigError(f"generation {gen.index} ({gen_label(gen.index)}): cannot build model "
                          f"{gen.model!r} for data set {ctx.exp.dataset.name!r}: {msg}") from exc


def train_generation(ctx, gen, teacher_model) -> GenResult:
    from engine.objectives import diagnostics, summarize_diagnostics

    t, data, device = gen.training, ctx.data, ctx.device
    where = f"generation {gen.index} ({gen_label(gen.index)})"
    if ctx.world_size > 1:
        raise ConfigError(f"{where}: language models train in one process, found {ctx.world_size} (set gpus = 1)")
    if gen.inherit:
        raise ConfigError(f"{where}: inherit: parts are copied between image models only, found {gen.inherit} "
                          f"for language model {gen.model!r}")
    seed = ctx.gen_seed(gen)
    model = build_model(ctx, gen).to(device)
    ctx.gen_start(gen, model, metric="ppl", vocab=data.num_classes, bptt=data.bptt)

    objective, options, dkpp, optimizer, dtype, autocast = step_parts(gen, model, seed, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    try:
        train = batchify(data.train, t.batch_size).to(device)
        val = batchify(data.val, t.eval_batch_size).to(device)
        test = batchify(data.test, t.eval_batch_size).to(device)
    except ValueError as exc:
        raise ConfigError(f"{where}: batch_size/eval_batch_size: {exc}") from exc
    steps = math.ceil((train.size(0) - 1) / data.bptt)
    schedule = LRSchedule(t.schedule, t.optimizer.lr, t.epochs, steps)
    teacher = teacher_model.eval().to(device) if teacher_model is not None else None

    start_epoch, skip, history, best, running, hidden = 0, 0, [], {}, None, (None, None)
    if ctx.resume is not None:
        r = ctx.resume
        model.load_state_dict(r["state_dict"])
        optimizer.load_state_dict(r["optimizer"])
        schedule.load_state_dict(r["schedule"])
        if scaler is not None:
            scaler.load_state_dict(r["scaler"])
        if dkpp is not None:
            dkpp.set_state(r["dkpp"])
        start_epoch, skip, history, best = r["epoch"], r["step"], list(r["history"]), dict(r["best"])
        if skip:
            running = r["running"]
            hidden = tuple(tuple(h.to(device) for h in s) if s is not None else None for s in r["hidden"])

    def last(epoch, step, sums, states=(None, None)):
        extra = {"schedule": schedule.state_dict(), "running": sums,
                 "hidden": [tuple(h.detach().cpu() for h in s) if s is not None else None for s in states]}
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        if dkpp is not None:
            extra["dkpp"] = dkpp.get_state()
        save_last(ctx, gen, epoch, step, model, optimizer, history, best, **extra)

    probs = None
    for epoch in range(start_epoch, t.epochs):
        torch.manual_seed(derive_seed(seed, "epoch", epoch))   # dropout masks
        sums = running if running is not None else {"loss": 0.0, "ce": 0.0, "n": 0, "seconds": 0.0, "diag": {}}
        if running is not None:   # continuing mid-epoch: the RNG as it was at the stop
            checkpoint.set_rng_state(ctx.resume["rng"])
        running = None
        lr = schedule(epoch * steps + min(skip, steps - 1))
        t0 = time.perf_counter()
        for s in train_windows(model, train, data.bptt, optimizer, objective, options, teacher, t.grad_clip,
                               autocast, scaler, lambda i: schedule(epoch * steps + i), skip, *hidden):
            lr = optimizer.param_groups[0]["lr"]
            stop = check_finite(ctx, ctx.stop.is_set(), s.loss, where, epoch + 1, s.index + 1)
            sums["loss"] += s.loss * s.n
            sums["ce"] += s.ce * s.n
            sums["n"] += s.n
            if s.index % DIAG_EVERY == 0:
                diag = diagnostics(s.logits, s.teacher_logits, s.labels, gen.objective, **options)
                for k, v in diag.items():
                    sums["diag"][k] = sums["diag"].get(k, 0) + v
            if stop:
                sums["seconds"] += time.perf_counter() - t0
                last(epoch, s.index + 1, sums, (s.hidden, s.teacher_hidden))
                raise Cancelled(f"{where}: stopped at epoch {epoch + 1} step {s.index + 1}")
        skip, hidden = 0, (None, None)
        sums["seconds"] += time.perf_counter() - t0
        train_seconds, n = sums["seconds"], sums["n"]

        t1 = time.perf_counter()
        metrics = {"train_loss": sums["loss"] / n, "train_ppl": ppl(sums["ce"] / n)}
        metrics["val_loss"], _ = evaluate(model, val, data.bptt, autocast=autocast)
        metrics["val_ppl"] = ppl(metrics["val_loss"])
        final_epoch = epoch == t.epochs - 1
        metrics["test_loss"], probs = evaluate(model, test, data.bptt, keep_probs=final_epoch, autocast=autocast)
        metrics["test_ppl"] = ppl(metrics["test_loss"])
        seconds = train_seconds + time.perf_counter() - t1
        schedule.epoch_end(metrics["val_ppl"])
        record = {"gen": gen.index, "epoch": epoch + 1, "epochs": t.epochs, **metrics, "lr": lr,
                  "seconds": round(seconds, 3), "tokens_per_s": round(n / max(train_seconds, 1e-9), 1),
                  "diagnostics": summarize_diagnostics(sums["diag"])}
        end_epoch(ctx, record, metrics, history, best, lambda: last(epoch + 1, 0, None))

    if probs is None:   # resumed after the last epoch had been saved: evaluate the test set again
        _, probs = evaluate(model, test, data.bptt, keep_probs=True, autocast=autocast)
    final = {k: history[-1][k] for k in METRICS}
    return GenResult(model, final, best, probs, sum(h["seconds"] for h in history))
