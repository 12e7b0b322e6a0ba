"""Tasks: what one kind of data set trains like. engine/generation.py owns everything a
generation does the same for every task; a task supplies only what differs.

A task (a `Task` subclass) holds the loaded data of a run and says how to build, place and
judge models for it; `Task.start` makes the per-generation part (a `Loop` subclass): the
batches, the placed teacher, the steps of one epoch and the evaluation. A new task (say, a text
classifier) is one new module with a subclass of each, plus its line in
`engine.chain.load_task`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterator

import numpy as np
import torch

from engine import spec

# Steps between read-backs of the training loss, errors and diagnostics: each read-back waits for
# the GPU (a host sync), which per step would leave it idle while Python queues the next step.
READ_BACK_STEPS = 25


def read_back(window: list, sums: dict, keys: tuple, counted: tuple = ()) -> list:
    """Add a window of steps' numbers, kept on the device until now, to the epoch's sums in one
    host sync, step by step as they were made; [(step from 1, loss)] of the window. An entry is
    (step, n, diagnostic keys, 1-d tensor [*one value per key of `keys`, *diagnostics]): a key's
    value is a mean over the step's n samples (sums[key] += value * n) or, in `counted`, a count
    (sums[key] += value); the first key is the loss. The diagnostics are sums (n counted once)."""
    values = iter(torch.cat([v for *_, v in window]).tolist())
    out = []
    for step, n, diag_keys, _ in window:
        row = [next(values) for _ in range(len(keys) + len(diag_keys))]
        for k, v in zip(keys, row):
            sums[k] += v if k in counted else v * n
        sums["n"] += n
        if diag_keys:
            sums["diag"]["n"] = sums["diag"].get("n", 0) + n
        for k, v in zip(diag_keys, row[len(keys):]):
            sums["diag"][k] = sums["diag"].get(k, 0) + (round(v) if k == "teacher_agree" else v)
        out.append((step + 1, row[0]))
    return out


class Loop(ABC):
    """One generation's task-specific part, made by `Task.start` (which places the teacher,
    makes the batches and wraps the model for DDP/compile)."""
    steps: int                       # optimizer steps per epoch

    @abstractmethod
    def begin_epoch(self, epoch: int) -> None:
        """Seed what epoch `epoch` draws (order, augmentation, dropout) from (seed, epoch)."""

    @abstractmethod
    def train(self, epoch: int, skip: int, sums: dict, carry, lr_at: Callable[[int], float]) -> Iterator:
        """The epoch's steps from step `skip` on (`carry`: the state restore_carry gave, or None),
        setting the learning rate of step i to lr_at(i) and adding into `sums` (the keys of
        Task.sums, "n", "diag"). Yields (steps done, [(step from 1, loss), ...] since the last
        yield, carry) wherever the generation may stop; every rank yields at the same steps."""

    @abstractmethod
    def evaluate(self, sums: dict, keep_probs: bool) -> tuple[dict, np.ndarray | None]:
        """(the epoch's metrics: the training ones from its global sums, then validation and
        test; the test probabilities for ensembles when keep_probs, else None)."""

    @abstractmethod
    def test_probs(self) -> np.ndarray:
        """The test probabilities of the model as it is (a generation resumed after its end)."""

    def fit(self) -> dict:
        """The fit criterion, added to gen_end's `final` once the generation has trained: the
        trained model evaluated on the training set in evaluation mode, no augmentation (e.g.
        train_eval_err). A task without one returns {}."""
        return {}

    def carry_state(self, carry) -> dict:
        """Entries of last.pt that continue the epoch mid-way (carry None: at an epoch's end)."""
        return {}

    def restore_carry(self, last: dict):
        """The carry of a generation stopped mid-epoch, from its last.pt."""
        return None


class Task(ABC):
    """What one kind of data set trains like, holding the run's data (`self.data`)."""
    metrics: tuple[str, ...]         # the epoch metrics that make gen_end's `final` (with Loop.fit's)
    sums: tuple[str, ...]            # running sums of an epoch besides "n", "seconds", "diag"

    def __init__(self, data):
        self.data = data
        self.num_classes: int = data.num_classes

    def check(self, ctx, gen: spec.Generation, where: str) -> None:
        """ConfigError for a generation this task cannot train."""

    @abstractmethod
    def model_args(self) -> dict:
        """Keyword arguments of engine.models.build besides the name and gen.model_options."""

    @abstractmethod
    def place(self, ctx, gen: spec.Generation, model: torch.nn.Module) -> torch.nn.Module:
        """The student on ctx.device (in its memory layout)."""

    def gen_start_extra(self) -> dict:
        """Fields the gen_start event adds for this task."""
        return {}

    @abstractmethod
    def start(self, ctx, gen: spec.Generation, model, teacher, parts) -> Loop:
        """The generation's Loop (parts: engine.generation.Parts)."""

    @abstractmethod
    def plateau_metric(self, metrics: dict) -> float:
        """What the plateau schedule watches (never a test metric)."""

    @abstractmethod
    def throughput(self, n: int, seconds: float) -> dict:
        """The epoch record's count and rate fields."""

    @abstractmethod
    def ensemble_metrics(self, member_probs: list) -> dict:
        """An ensemble's test metrics from its members' stored test probabilities."""
