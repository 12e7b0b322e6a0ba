"""Optimisation and precision, for every task: the SGD optimizer, the learning-rate schedule,
one optimizer step (loss scaling, clipping), and the device-dependent defaults of precision and
memory layout, each resolved in one function here.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from engine import hardware, spec


def make_optimizer(model: torch.nn.Module, o: spec.Optimizer, device: torch.device) -> torch.optim.SGD:
    """SGD over the trainable parameters only: frozen inherited parts get no update and no
    weight decay. Fused on CUDA (one kernel for all parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov and o.momentum > 0, fused=True if device.type == "cuda" else None)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (momentum) its parameter's strides. load_state_dict
    keeps the saved layout, so a checkpoint of a contiguous model (the CPU) resumed channels-last
    (a GPU), or the reverse, would mix layouts, which CUDA's fused SGD refuses."""
    for p, state in optimizer.state.items():
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


class LRSchedule:
    """The learning rate of every step (counted from 0 over the whole generation).

    constant; multistep: x gamma from each milestone epoch on; cosine: from lr to 0 over the
    steps after the warmup; plateau: x gamma after an epoch whose monitored metric (the task's
    `plateau_metric`, never the test set) improved on the previous epoch's by less than
    `threshold`; onecycle: a linear rise from lr/25 over `warmup_epochs` (default 30% of
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor, model, grad_clip: float | None) -> None:
    """Backward of `loss` (scaled when fp16 asks for it), gradient-norm clipping of the trainable
    parameters (on the unscaled gradients), the update."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    scaler.step(optimizer)
    scaler.update()


# ---- precision and memory layout: the device-dependent defaults ------------------------------

def autocast_dtype(precision: str, device: torch.device, model: str | None = None):
    """auto: engine.hardware.resolve_precision (bf16 on CUDA and on CPUs that do bf16 in hardware).
    None means plain fp32 (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[hardware.resolve_precision(precision, device, model)]


def autocast(dtype, device: torch.device):
    """A factory of the forward passes' autocast context (nullcontext for fp32)."""
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext


def grad_scaler(dtype, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16; a disabled scaler (its calls pass through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def channels_last(training: spec.Training, device: torch.device, model: str | None = None) -> bool:
    """Whether image models and batches use the channels-last layout (engine.hardware.channels_last)."""
    return hardware.channels_last(training.channels_last, device, model)
