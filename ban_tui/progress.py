"""Progress of a whole chain and its ETA, as pure functions of a RunState and the run's plan.

The events say how many epochs a generation has only once it starts (gen_start), so counting
from them alone gives `30/45` while generation 3 of 4 runs, where the truth is 30/60. The plan
comes from the run's snapshot, `experiment.toml` (the resolved experiment the engine runs:
every generation with its epochs and model), read by engine.runs.snapshot_experiment: no validation, no torch.
Without a snapshot (a remote run, an old run) the totals count the started generations only and
say so (`30/45+`).

ETA of the whole chain: the epochs left in each generation times a seconds-per-epoch measured
on the run itself: the generation's own mean once it has finished an epoch, else that of the
latest measured student with the same model, else the latest student, else the latest
generation with the same model, else the latest measured one (students pay for their teacher's
forward pass, so a teacher's epochs are the last resort). Every ETA is shown as h:mm:ss.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.runs import RunState, snapshot_experiment


@dataclass(frozen=True)
class PlannedGen:
    epochs: int
    model: str = ""


def load_plan(run_dir: Path) -> list[PlannedGen] | None:
    """The generations of a run's snapshot, in order; None when it has none or it cannot be read."""
    exp = snapshot_experiment(run_dir)
    if exp is None:
        return None
    try:
        return [PlannedGen(int(g["epochs"]), str(g.get("model", exp.get("model", ""))))
                for g in exp["generation"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class Progress:
    done: int                 # epochs finished over the chain
    total: int                # epochs planned over the chain (the started generations without a plan)
    exact: bool               # the total covers every generation (a plan was there)
    eta: float | None         # seconds left for the whole chain; None when it cannot be told

    def __str__(self) -> str:
        return f"{self.done}/{self.total}{'' if self.exact else '+'}"


def hms(seconds: float | None) -> str:
    """One format for every ETA: h:mm:ss ('-' when unknown)."""
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rate(state: RunState, gen: int, model: str) -> float | None:
    """Seconds per epoch to expect for a generation (see the module's docstring)."""
    g = state.gens.get(gen)
    if g is not None and g.epoch and g.seconds:
        return g.seconds / g.epoch
    measured = [x for x in sorted(state.gens.values(), key=lambda x: -x.gen) if x.epoch and x.seconds]
    for keep in (lambda x: x.gen > 0 and x.model == model, lambda x: x.gen > 0,
                 lambda x: x.model == model, lambda x: True):
        found = [x for x in measured if keep(x)]
        if found:
            return found[0].seconds / found[0].epoch
    return None


def chain_progress(state: RunState, plan: list[PlannedGen] | None = None) -> Progress:
    """Epochs done / planned over every generation, and the whole chain's ETA (None without a
    plan, since the generations not started yet are unknown, and for a run that ended not ok)."""
    planned = dict(enumerate(plan or []))
    for k, g in state.gens.items():        # started generations: their gen_start is the truth
        p = planned.get(k, PlannedGen(0))
        planned[k] = PlannedGen(g.epochs or p.epochs, g.model or p.model)
    done = sum(min(g.epoch, planned[k].epochs) if planned[k].epochs else g.epoch for k, g in state.gens.items())
    total = sum(p.epochs for p in planned.values())
    ok = state.end is not None and state.end.get("status") == "ok"
    exact = (plan is not None and len(plan) >= len(planned)) or ok   # an ok run started every generation
    if state.end is not None:
        return Progress(done, total, exact, 0.0 if ok else None)
    if not exact:
        return Progress(done, total, exact, None)
    eta = 0.0
    for k, p in sorted(planned.items()):
        g = state.gens.get(k)
        left = 0 if g is not None and g.done else p.epochs - (g.epoch if g else 0)
        if left > 0:
            rate = _rate(state, k, p.model)
            if rate is None:
                return Progress(done, total, exact, None)
            eta += left * rate
    return Progress(done, total, exact, eta)
