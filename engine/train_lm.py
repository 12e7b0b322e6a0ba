"""One language-model generation: truncated-BPTT training of a word-level LM (BAN paper, 4.3).

The objectives are the image ones, applied token by token: logits [T, B, V] are flattened to
[T*B, V] and targets to [T*B]. Teacher and student read the same windows and each carries its
own hidden state from window to window (detached, so gradients stop at the window edge); the
teacher runs in eval mode under inference_mode, so its dropout is off.

Optimisation as in Zaremba et al. / Kim et al.: plain SGD, gradient-norm clipping
(`training.grad_clip`), and the learning rate multiplied by `schedule.gamma` after an epoch whose
validation perplexity improved by less than `schedule.threshold` (schedule name "plateau"; LSTM:
lr 1, x0.25; CNN-LSTM: lr 2, x0.5, threshold 0.5).

Test probabilities for ensembles: an ensemble's next-word distribution is the mean of its
members' distributions, so its probability of the actual next word is the mean of the members'
probabilities of that word. Storing, per generation, each test position's probability of the
correct next token (float32 [T_test], in stream order, see `ptb.predicted_tokens`) is therefore
enough for the exact ensemble perplexity: exp(-mean(log(mean_k p_k))) (`ensemble_metrics`).
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.ptb import batchify, windows


def detach(hidden):
    return tuple(h.detach() for h in hidden)


def train_epoch(model, columns, bptt, optimizer, objective, options=None, teacher=None, grad_clip=None,
                autocast=nullcontext, diagnostics=None):
    """One pass over the training columns [L, B]. Returns (mean objective loss, mean label
    cross-entropy) over the predicted tokens; `diagnostics(student, teacher, labels)` (optional)
    is called on each window's flattened logits."""
    options = options or {}
    model.train()
    batch = columns.size(1)
    hidden = model.init_hidden(batch)
    teacher_hidden = teacher.init_hidden(batch) if teacher is not None else None
    loss_sum = ce_sum = 0.0
    n = 0
    for x, y in windows(columns, bptt):
        hidden = detach(hidden)
        teacher_logits = None
        with autocast():
            if teacher is not None:
                with torch.inference_mode():
                    teacher_logits, teacher_hidden = teacher(x, teacher_hidden)
                teacher_logits = teacher_logits.reshape(-1, teacher_logits.size(-1))
            logits, hidden = model(x, hidden)
            logits = logits.reshape(-1, logits.size(-1))
            labels = y.reshape(-1)
            loss = objective(logits, teacher_logits, labels, **options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        with torch.no_grad():
            ce = F.cross_entropy(logits.float(), labels)
            if diagnostics is not None:
                diagnostics(logits, teacher_logits, labels)
        loss_sum += loss.detach() * labels.numel()
        ce_sum += ce * labels.numel()
        n += labels.numel()
    return float(loss_sum) / n, float(ce_sum) / n


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


def ppl(loss: float) -> float:
    """Perplexity of a mean per-token cross-entropy in nats (inf instead of an overflow)."""
    return math.exp(loss) if loss < 700 else float("inf")


def ensemble_metrics(member_probs) -> dict:
    """Test loss and perplexity of an ensemble from its members' per-token probabilities of the
    correct next word (each a float vector [T_test], same positions for every member)."""
    probs = [np.asarray(p, dtype=np.float64) for p in member_probs]
    if len({p.shape for p in probs}) != 1:
        raise ValueError(f"ensemble: members were evaluated on different test positions, found shapes "
                         f"{[p.shape for p in probs]} (use one eval_batch_size and bptt for all generations)")
    loss = float(-np.mean(np.log(np.mean(probs, axis=0))))
    return {"test_loss": loss, "test_ppl": ppl(loss)}
