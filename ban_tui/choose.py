"""Which experiments of a config a command runs (--only, --all, the default), and how they are
printed before they run: a sweep's grid, an experiment's one-line summary, its resolved chain.
Raises LookupError (no such experiment) or ValueError (a sweep too big without --yes) with the
message to show. Never imports torch or textual."""
from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

from rich.console import Console

from engine import spec
from engine.catalog import CONTROL_SUFFIX
from engine.runs import gen_label
from engine.spec.checks import did_you_mean
from ban_tui import launch
from ban_tui.live import print_table, say

MAX_CELLS = 1000   # a bigger sweep runs only with --yes


def pick_experiments(config: spec.Config, only: list[str], every: bool) -> list[spec.Experiment]:
    """The picked experiments (see `chosen`), each followed by its independent-CE control
    (<name>+ce, from `control = "independent"`)."""
    exps = config.experiments
    names = [m for e in chosen(config, only, every) for m in (e.name, e.name + CONTROL_SUFFIX) if m in exps]
    return [exps[n] for n in dict.fromkeys(names)]


def chosen(config: spec.Config, only: list[str], every: bool) -> list[spec.Experiment]:
    """--only names, sweep names (all their cells) or globs over the expanded names, in the order
    given; --all; else quickstart, else the first marked default, else the file's first experiment
    (with the rest of its sweep)."""
    exps = config.experiments
    if only:
        picked = []
        for pattern in only:
            names = (list(config.sweeps[pattern]) if pattern in config.sweeps else
                     [pattern] if pattern in exps else fnmatch.filter(exps, pattern))
            if not names:
                raise LookupError(f"{config.path}: no experiment {pattern!r}{did_you_mean(pattern, list(exps) + list(config.sweeps))}; "
                     f"expected one of: {', '.join(list(config.sweeps) + [n for n in exps if not sweep_of(config, n)])} "
                     "(or a glob over the expanded names, e.g. 'NAME.objective=ban*')")
            picked += names
        return [exps[n] for n in dict.fromkeys(picked)]
    if every:
        return list(exps.values())
    if "quickstart" in exps:
        return [exps["quickstart"]]
    marked = [e for e in exps.values() if getattr(e, "default", False)]
    first = (marked or list(exps.values()))[0]
    parent = sweep_of(config, first.name)
    return [exps[n] for n in config.sweeps[parent]] if parent else [first]


def sweep_of(config: spec.Config, name: str) -> str | None:
    """The sweep an expanded experiment comes from (None for a plain one)."""
    return next((parent for parent, cells in config.sweeps.items() if name in cells), None)


def print_grids(console: Console, config: spec.Config, names=None) -> None:
    """Each sweep as a table of its cells (only `names` when given), with the grid's size."""
    for parent, cells in config.sweeps.items():
        shown = {n: c for n, c in cells.items() if names is None or n in names}
        if not shown:
            continue
        keys = list(next(iter(cells.values())))
        sizes = " x ".join(f"{len({json.dumps(c[k], sort_keys=True) for c in cells.values()})} {k}" for k in keys)
        say(console, f"sweep {parent}: {len(cells)} experiments ({sizes})"
                     + (f", {len(shown)} picked" if len(shown) != len(cells) else ""))
        rows = [{"experiment": n, **{k: cell_text(config.experiments[n], k, v) for k, v in c.items()}}
                for n, c in shown.items()]
        print_table(console, [("experiment", "experiment")] + [(k, k) for k in keys], rows)


def cell_text(exp: spec.Experiment, key: str, value) -> str:
    """A swept value as the grid shows it; `n/a` for an objective option no generation takes."""
    head, _, sub = key.partition(".")
    if head == "objective_options" and not any(sub in g.objective_options for g in exp.generations):
        return "n/a"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def refuse_big_sweeps(config: spec.Config, exps, yes: bool) -> None:
    for parent, cells in config.sweeps.items():
        n = sum(e.name in cells for e in exps)
        if n > MAX_CELLS and not yes:
            raise ValueError(f"{config.path}: sweep {parent} has {n:,} cells to run (more than {MAX_CELLS:,}); "
                 "run them with --yes, or pick some with --only GLOB")


def chain_summary(exp: spec.Experiment) -> str:
    """One line: data set, generations with objectives, model, epochs, ensembles, seeds."""
    objectives = " -> ".join(g.objective for g in exp.generations)
    models = sorted({g.model for g in exp.generations})
    epochs = sorted({g.training.epochs for g in exp.generations})
    ens = ", ".join(f"Ens*{k}" for k in exp.ensembles) or "none"
    return (f"{exp.name}: {exp.dataset.name}, {len(exp.generations)} generations ({objectives}), "
            f"model {', '.join(models)}, epochs {', '.join(map(str, epochs))}, ensembles {ens}, "
            f"seeds {exp.seeds}")

def print_chain(console: Console, file: Path, exp: spec.Experiment, runs_dir: Path, device: str | None) -> None:
    """The resolved chain of an experiment and the commands that would start it."""
    say(console, f"{exp.name}: data set {exp.dataset.name}, seeds {exp.seeds}, device {device or exp.device}, "
                 f"runs in {runs_dir}/{exp.name}")
    rows = [{"generation": gen_label(g.index), "objective": g.objective, "model": g.model,
             "epochs": g.training.epochs, "batch": g.training.batch_size, "lr": g.training.optimizer.lr,
             "schedule": g.training.schedule.name,
             "teacher": gen_label(g.teacher) if g.teacher is not None else "-",
             "inherit": ", ".join(g.inherit) or "-"} for g in exp.generations]
    cols = [(k, k if k != "generation" else "") for k in rows[0]] if rows else []
    print_table(console, cols, rows)
    first = 0 if exp.ensemble_include_teacher else 1
    for k in exp.ensembles:
        say(console, f"Ens*{k} = mean of the softmax of {', '.join(gen_label(g) for g in range(first, k + 1))}")
    for seed in exp.seeds:
        argv = launch.engine_command(file, exp.name, seed, runs_dir, "<run-id>", device, exp.gpus, "python")
        say(console, "would run: " + shlex.join(argv))
