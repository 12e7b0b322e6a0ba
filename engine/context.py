"""What every generation of one run shares: `Context`, made once by engine/__main__.py and
never changed afterwards (frozen). What differs from one generation to the next (the data the
task holds, where a generation resumes) is passed explicitly (engine/generation.py)."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import torch

from engine import ddp, spec
from engine.events import EventWriter
from engine.runs import RunPaths, gen_label


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any tuple of ints and strings (the same in every process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def describe(gen: spec.Generation) -> str:
    """A generation as messages name it: "generation 1 (BAN-1)"."""
    return f"generation {gen.index} ({gen_label(gen.index)})"


@dataclass(frozen=True)
class Context:
    exp: spec.Experiment
    seed: int                          # the chain's seed
    paths: RunPaths
    device: torch.device
    events: EventWriter | None = None  # None on DDP ranks other than 0: they write nothing
    stop: threading.Event = field(default_factory=threading.Event)   # set by SIGTERM/SIGINT
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

    def agree(self, stop: bool, bad: bool) -> tuple[bool, bool]:
        """(stop, bad) true on any rank: every rank stops, or fails, at the same step."""
        if self.world_size == 1:
            return stop, bad
        s, b = ddp.all_reduce([float(stop), float(bad)], self.device, op="max")
        return bool(s), bool(b)

    def should_stop(self) -> bool:
        return self.agree(self.stop.is_set(), False)[0]
