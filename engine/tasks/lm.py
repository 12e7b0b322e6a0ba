"""Language modelling: truncated-BPTT training of a word-level LM (BAN paper, 4.3), the task of
catalog.LM_DATASETS; engine/generation.py owns what every generation does the same.

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

gen_end's final adds train_eval_loss/train_eval_ppl: the trained model on the training columns
in eval mode (one forward pass, hidden state carried), the fit criterion beside train_ppl.

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
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine import optim
from engine.context import derive_seed, describe
from engine.data.ptb import batchify, windows
from engine.errors import ConfigError
from engine.tasks import READ_BACK_STEPS, Loop, Task, read_back

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
    losses: torch.Tensor         # [the objective, the label cross-entropy], means over the window's
                                 # tokens, on the device (reading them back would sync every window)
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
    the learning rate of window i; `scaler` (optim.grad_scaler) scales fp16 losses."""
    options = options or {}
    model.train()
    batch = columns.size(1)
    hidden = model.init_hidden(batch) if hidden is None else hidden
    if teacher is not None and teacher_hidden is None:
        teacher_hidden = teacher.init_hidden(batch)
    scaler = optim.grad_scaler(None, columns.device) if scaler is None else scaler
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
        # the loss summed over time steps, mean over the batch (see above)
        optim.optimizer_step(optimizer, scaler, loss * x.size(0), model, grad_clip)
        logits = logits.detach()
        with torch.no_grad():
            losses = torch.stack([loss.detach().float(), F.cross_entropy(logits, labels)])
        yield Step(i, losses, labels.numel(), logits, teacher_logits, labels, hidden, teacher_hidden)


def train_epoch(model, columns, bptt, optimizer, objective, options=None, teacher=None, grad_clip=None):
    """(mean objective loss, mean label cross-entropy) of one pass over the columns."""
    total = n = 0
    for s in train_windows(model, columns, bptt, optimizer, objective, options, teacher, grad_clip):
        total, n = total + s.losses.double() * s.n, n + s.n
    loss, ce = (total / n).tolist()
    return loss, ce


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


def ensemble_metrics(member_probs) -> dict:
    """Test loss and perplexity of an ensemble from its members' per-token probabilities of the
    correct next word (each a float vector [T_test], the same positions for every member)."""
    probs = [np.asarray(p, dtype=np.float64) for p in member_probs]
    if len({p.shape for p in probs}) != 1 or probs[0].ndim != 1:
        raise ValueError(f"ensemble: expected every member's probabilities of the same test tokens, found shapes "
                         f"{[p.shape for p in probs]} (use one eval_batch_size and bptt for all generations)")
    loss = float(-np.mean(np.log(np.clip(np.mean(probs, axis=0), 1e-300, None))))
    return {"test_loss": loss, "test_ppl": ppl(loss)}


class LanguageModel(Task):
    """The task of engine.data.ptb corpora."""
    metrics = ("train_loss", "train_ppl", "val_loss", "val_ppl", "test_loss", "test_ppl")
    sums = ("loss", "ce")

    def check(self, ctx, gen, where) -> None:
        if ctx.world_size > 1:
            raise ConfigError(f"{where}: language models train in one process, found {ctx.world_size} (set gpus = 1)")
        if gen.inherit:
            raise ConfigError(f"{where}: inherit: parts are copied between image models only, found {gen.inherit} "
                              f"for language model {gen.model!r}")

    def model_args(self) -> dict:
        return {"num_classes": self.data.num_classes, "vocab": self.data.vocab}

    def place(self, ctx, gen, model):
        return model.to(ctx.device)

    def gen_start_extra(self) -> dict:
        return {"metric": "ppl", "vocab": self.data.num_classes, "bptt": self.data.bptt}

    def start(self, ctx, gen, model, teacher, parts) -> LanguageModelLoop:
        return LanguageModelLoop(ctx, gen, model, teacher, parts, self.data)

    def plateau_metric(self, metrics: dict) -> float:
        return metrics["val_ppl"]

    def throughput(self, n: int, seconds: float) -> dict:
        return {"tokens_per_s": round(n / max(seconds, 1e-9), 1)}

    def ensemble_metrics(self, member_probs: list) -> dict:
        return ensemble_metrics(member_probs)


class LanguageModelLoop(Loop):
    """One LM generation's columns, teacher and windows.
    The carry between steps is (student hidden state, teacher hidden state)."""

    def __init__(self, ctx, gen, model, teacher, parts, corpus):
        t, device = gen.training, ctx.device
        self.ctx, self.gen, self.model, self.parts, self.bptt = ctx, gen, model, parts, corpus.bptt
        self.seed = ctx.gen_seed(gen)
        try:
            self.columns = batchify(corpus.train, t.batch_size).to(device)
            self.val = batchify(corpus.val, t.eval_batch_size).to(device)
            self.test = batchify(corpus.test, t.eval_batch_size).to(device)
        except ValueError as exc:
            raise ConfigError(f"{describe(gen)}: batch_size/eval_batch_size: {exc}") from exc
        self.steps = math.ceil((self.columns.size(0) - 1) / self.bptt)
        self.teacher = teacher.eval().to(device) if teacher is not None else None

    def begin_epoch(self, epoch: int) -> None:
        torch.manual_seed(derive_seed(self.seed, "epoch", epoch))   # dropout masks

    def train(self, epoch, skip, sums, carry, lr_at):
        from engine.objectives import diagnostic_sums
        p, t = self.parts, self.gen.training
        window = []   # (window, tokens, diagnostic keys, [loss, ce, *diagnostics]) not yet read back
        for s in train_windows(self.model, self.columns, self.bptt, p.optimizer, p.objective, p.options, self.teacher,
                               t.grad_clip, p.autocast, p.scaler, lr_at, skip, *(carry or (None, None))):
            diag = {}
            if s.index % DIAG_EVERY == 0:
                diag = diagnostic_sums(s.logits, s.teacher_logits, s.labels, self.gen.objective, **p.options)
            window.append((s.index, s.n, list(diag), torch.cat([s.losses, *(v.reshape(1) for v in diag.values())])))
            # read back every READ_BACK_STEPS windows, at the epoch's end and as soon as SIGTERM asks
            if len(window) == READ_BACK_STEPS or s.index + 1 == self.steps or self.ctx.stop.is_set():
                yield s.index + 1, read_back(window, sums, ("loss", "ce")), (s.hidden, s.teacher_hidden)
                window = []

    def evaluate(self, sums, keep_probs):
        autocast, n = self.parts.autocast, sums["n"]
        metrics = {"train_loss": sums["loss"] / n, "train_ppl": ppl(sums["ce"] / n)}
        metrics["val_loss"], _ = evaluate(self.model, self.val, self.bptt, autocast=autocast)
        metrics["val_ppl"] = ppl(metrics["val_loss"])
        metrics["test_loss"], probs = evaluate(self.model, self.test, self.bptt, keep_probs=keep_probs, autocast=autocast)
        metrics["test_ppl"] = ppl(metrics["test_loss"])
        return metrics, probs

    def test_probs(self):
        return evaluate(self.model, self.test, self.bptt, keep_probs=True, autocast=self.parts.autocast)[1]

    def fit(self):
        """The training columns in eval mode (dropout off), hidden state carried: one forward pass."""
        loss, _ = evaluate(self.model, self.columns, self.bptt, autocast=self.parts.autocast)
        return {"train_eval_loss": loss, "train_eval_ppl": ppl(loss)}

    def carry_state(self, carry) -> dict:
        states = carry or (None, None)
        return {"hidden": [tuple(h.detach().cpu() for h in s) if s is not None else None for s in states]}

    def restore_carry(self, last):
        return tuple(tuple(h.to(self.ctx.device) for h in s) if s is not None else None for s in last["hidden"])
