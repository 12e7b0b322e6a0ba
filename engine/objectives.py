"""Training objectives of Born-Again Networks (Furlanello et al., ICML 2018), on logits.

Every objective is `f(student_logits [N,C], teacher_logits [N,C] | None, labels [N] int64,
**options) -> scalar` (the mean over the N samples). Language models are not special-cased:
callers flatten [B,T,V] logits to [B*T,V] and [B,T] labels to [B*T].

The teacher is a constant: the caller runs it under torch.inference_mode() with teacher.eval(),
and here its logits are detached and only used through fresh tensors (softmax etc.), so no
inference tensor is ever saved for the student's backward and no gradient reaches the teacher.

Gradients (eq. 5-7): for the cross-entropy between the student's softmax q and a target
distribution p, d loss_s / d z_i = q_i - p_i; `logit_grad` below writes this once per objective
and `diagnostics` splits it into the correct-class and the wrong-class ("dark knowledge") parts.
"""
from __future__ import annotations

import inspect
import weakref

import torch
import torch.nn.functional as F

from engine import catalog


def _check(name, student, teacher, labels, unknown, needs_teacher=True):
    # one-line errors: which objective, what was expected, what was found
    if unknown:
        raise TypeError(f"objective {name!r}: unknown option(s) {', '.join(map(repr, sorted(unknown)))}")
    if student.dim() != 2 or labels.shape != student.shape[:1]:
        raise ValueError(f"objective {name!r}: expected logits [N,C] and labels [N], found "
                         f"{list(student.shape)} and {list(labels.shape)} (flatten [B,T,V] to [B*T,V])")
    if needs_teacher and (teacher is None or teacher.shape != student.shape):
        found = "none" if teacher is None else list(teacher.shape)
        raise ValueError(f"objective {name!r}: expected teacher logits of shape {list(student.shape)}, found {found}")


def _wide(x):
    """x in at least float32: bf16/fp16 softmaxes and their sums are too coarse (as autocast does)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _teacher_probs(teacher_logits, temperature=1.0):
    """softmax(t / T) of the teacher: a new tensor, so never an inference tensor."""
    return F.softmax(_wide(teacher_logits.detach()) / temperature, dim=1)


def teacher_confidence_weights(teacher_logits):
    """Eq. 10: w_s = p_{*,s} / sum_u p_{*,u}, the teacher's max probability normalised over the
    mini-batch; scaled by the batch size b so that the weights average 1 (the loss keeps the
    scale of plain CE)."""
    p_max = _teacher_probs(teacher_logits).max(dim=1).values
    return p_max * (p_max.numel() / p_max.sum())


def dkpp_permute(probs, generator):
    """Eq. 11 target: each row keeps its argmax entry in place and has its other C-1 entries
    permuted at random among the other classes (per row, never across samples)."""
    n, c = probs.shape
    top = probs.argmax(dim=1, keepdim=True)
    is_top = torch.zeros_like(probs, dtype=torch.uint8).scatter_(1, top, 1)
    others = is_top.argsort(dim=1, stable=True)[:, : c - 1]  # column indices of the non-argmax classes
    perm = torch.rand(n, c - 1, generator=generator, device=generator.device).argsort(dim=1)
    if perm.device != probs.device:   # a CPU generator's draw for a GPU batch: copied from pinned memory,
        # asynchronously (a pageable copy would wait for the GPU at every step)
        perm = perm.pin_memory().to(probs.device, non_blocking=True) if probs.device.type == "cuda" else perm.to(probs.device)
    out = probs.clone()
    out.scatter_(1, others, probs.gather(1, others.gather(1, perm)))
    return out


# The DKPP target each generator drew last, with the teacher logits it was drawn for, so that the
# step's diagnostics describe the permuted target that trained (and draw nothing themselves).
_DKPP_LAST: "weakref.WeakKeyDictionary[torch.Generator, tuple]" = weakref.WeakKeyDictionary()


def dkpp_target(teacher_logits, generator, draw: bool = True):
    """Eq. 11's target for these teacher logits. draw=True (the loss): a new permutation from
    `generator`, remembered. draw=False (the diagnostics): the one the loss last drew for these
    very logits; if the loss has not run on them, the one it would draw next (from a copy of the
    generator's state, so the generator does not advance)."""
    last = _DKPP_LAST.get(generator)
    if not draw and last is not None and last[0] is teacher_logits:
        return last[1]
    if not draw:
        copy = torch.Generator(generator.device)
        copy.set_state(generator.get_state())
        return dkpp_permute(_teacher_probs(teacher_logits), copy)
    target = dkpp_permute(_teacher_probs(teacher_logits), generator)
    _DKPP_LAST[generator] = (teacher_logits, target)
    return target


def ce(student_logits, teacher_logits, labels, **unknown):
    """Eq. 1: cross-entropy with the labels; teacher_logits is ignored (None for a teacher)."""
    _check("ce", student_logits, teacher_logits, labels, unknown, needs_teacher=False)
    return F.cross_entropy(_wide(student_logits), labels)


def ban(student_logits, teacher_logits, labels, *, temperature=1.0, **unknown):
    """Eq. 2: cross-entropy between the teacher's output distribution and the student's.
    With a temperature T both softmaxes are taken at T and the loss is scaled by T^2 (Hinton et
    al. 2015) so the gradient keeps its size: d/dz_i = T (q_i - p_i) at temperature T (eq. 5)."""
    _check("ban", student_logits, teacher_logits, labels, unknown)
    if not temperature > 0:
        raise ValueError(f"objective 'ban': expected temperature > 0, found {temperature!r}")
    target = _teacher_probs(teacher_logits, temperature)
    return F.cross_entropy(_wide(student_logits) / temperature, target) * temperature ** 2


def ban_plus_labels(student_logits, teacher_logits, labels, *, temperature=1.0, teacher_weight=1.0,
                    label_weight=1.0, **unknown):
    """Eq. 2 + eq. 1: teacher_weight * ban (at `temperature`) + label_weight * ce (at T = 1)."""
    _check("ban+l", student_logits, teacher_logits, labels, unknown)
    return (teacher_weight * ban(student_logits, teacher_logits, labels, temperature=temperature)
            + label_weight * ce(student_logits, None, labels))


def cwtm(student_logits, teacher_logits, labels, **unknown):
    """Eq. 9-10 (Confidence Weighted by Teacher Max): label cross-entropy with each sample
    weighted by the teacher's normalised max probability (weights average 1 over the batch)."""
    _check("cwtm", student_logits, teacher_logits, labels, unknown)
    w = teacher_confidence_weights(teacher_logits)
    return (w * F.cross_entropy(_wide(student_logits), labels, reduction="none")).mean()


def dkpp(student_logits, teacher_logits, labels, *, generator=None, **unknown):
    """Eq. 11 (Dark Knowledge with Permuted Predictions): cross-entropy to the teacher's
    distribution with its non-argmax entries permuted per sample, re-drawn at every call from
    `generator` (a seeded torch.Generator, so runs and resumes are reproducible)."""
    _check("dkpp", student_logits, teacher_logits, labels, unknown)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"objective 'dkpp': expected option generator=torch.Generator, found {type(generator).__name__}")
    return F.cross_entropy(_wide(student_logits), dkpp_target(teacher_logits, generator))


def ls(student_logits, teacher_logits, labels, *, smoothing=0.1, **unknown):
    """Label smoothing (Szegedy et al. 2016), a teacher-free baseline: cross-entropy to the
    target p = (1 - e) * onehot(y) + e / C, i.e. loss = (1 - e) * CE(z, y) + e * mean_c(-log q_c),
    with e = `smoothing` in [0, 1); d/dz = q - p. teacher_logits is ignored."""
    _check("ls", student_logits, teacher_logits, labels, unknown, needs_teacher=False)
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise ValueError(f"objective 'ls': expected smoothing in [0, 1), found {smoothing!r}")
    return F.cross_entropy(_wide(student_logits), labels, label_smoothing=float(smoothing))


OBJECTIVES = {"ce": ce, "ban": ban, "ban+l": ban_plus_labels, "cwtm": cwtm, "dkpp": dkpp, "ls": ls}
assert tuple(OBJECTIVES) == catalog.OBJECTIVES, "engine.catalog.OBJECTIVES and engine.objectives disagree"
# the options each objective accepts, read from its keyword-only parameters
OPTIONS = {name: tuple(k for k, p in inspect.signature(f).parameters.items() if p.kind is p.KEYWORD_ONLY)
           for name, f in OBJECTIVES.items()}


def logit_grad(student_logits, teacher_logits, labels, objective, temperature=1.0, teacher_weight=1.0,
               label_weight=1.0, generator=None, smoothing=0.1):
    """Per-sample gradient [N,C] of objective's loss * N w.r.t. the student's logits (eq. 5-6),
    written analytically. For dkpp it is q - p~ with p~ the permuted target that the loss drew
    for these teacher logits (`dkpp_target(..., draw=False)`: nothing is drawn here, so the
    diagnostics never change training)."""
    z = _wide(student_logits.detach())
    q = F.softmax(z, dim=1)
    y = F.one_hot(labels, z.shape[1]).to(z.dtype)
    if objective == "ce":
        return q - y
    if objective == "ls":
        return q - ((1 - smoothing) * y + smoothing / z.shape[1])
    if objective in ("ban", "ban+l"):
        g = temperature * (F.softmax(z / temperature, dim=1) - _teacher_probs(teacher_logits, temperature))
        return g if objective == "ban" else teacher_weight * g + label_weight * (q - y)
    if objective == "cwtm":
        return teacher_confidence_weights(teacher_logits)[:, None] * (q - y)
    if objective == "dkpp":
        if not isinstance(generator, torch.Generator):
            raise ValueError("objective 'dkpp': expected option generator=torch.Generator for its diagnostics")
        return q - dkpp_target(teacher_logits, generator, draw=False)
    raise KeyError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")


@torch.no_grad()
def diagnostic_sums(student_logits, teacher_logits, labels, objective, **options) -> dict:
    """Per-batch sums for the epoch event (eq. 7), as 0-d tensors on the logits' device (no host
    sync: a training loop adds them up and reads them back now and then): grad_correct =
    sum_s |g_{s,y}| and grad_dark = sum_s ||g_{s,i != y}||_2, with g the logit gradient of
    `objective` and y the label; with a teacher also conf_w, conf_w_sq (eq.-10 weights and their
    squares) and teacher_agree (samples whose teacher argmax is the label). Options as the
    objective's."""
    if objective in OBJECTIVES:  # same option and shape checks as the loss itself
        _check(objective, student_logits, teacher_logits, labels,
               set(options) - set(OPTIONS[objective]), needs_teacher=objective not in catalog.TEACHERLESS)
    g = logit_grad(student_logits, teacher_logits, labels, objective, **options)
    rows = torch.arange(len(labels), device=g.device)
    correct = g[rows, labels]
    dark = g.index_put((rows, labels), torch.zeros_like(correct)).norm(dim=1)
    sums = {"grad_correct": correct.abs().sum(), "grad_dark": dark.sum()}
    if objective not in catalog.TEACHERLESS:
        w = teacher_confidence_weights(teacher_logits)
        sums |= {"conf_w": w.sum(), "conf_w_sq": (w * w).sum(),
                 "teacher_agree": (teacher_logits.argmax(dim=1) == labels).sum().float()}
    return sums


def diagnostics(student_logits, teacher_logits, labels, objective, **options) -> dict:
    """`diagnostic_sums` read back as floats (one device sync), with n = the batch size."""
    sums = diagnostic_sums(student_logits, teacher_logits, labels, objective, **options)
    values = torch.stack(list(sums.values())).tolist()  # one device sync for all of them
    out = {"n": len(labels), **dict(zip(sums, values))}
    if "teacher_agree" in out:
        out["teacher_agree"] = round(out["teacher_agree"])
    return out


def summarize_diagnostics(sums):
    """Means over an epoch from summed `diagnostics` dicts: grad_correct, grad_dark and, with a
    teacher, conf_w_mean, conf_w_std and teacher_acc."""
    n = max(sums.get("n", 0), 1)
    out = {"grad_correct": sums["grad_correct"] / n, "grad_dark": sums["grad_dark"] / n}
    if "conf_w" in sums:
        mean = sums["conf_w"] / n
        out |= {"conf_w_mean": mean, "conf_w_std": max(sums["conf_w_sq"] / n - mean * mean, 0.0) ** 0.5,
                "teacher_acc": sums["teacher_agree"] / n}
    return out


