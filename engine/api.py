"""A Python API over run directories, for notebooks (issue 24).

    from engine import api
    df = api.runs("runs")                      # one row per run x generation / ensemble
    rep = api.report("runs", experiment="quickstart")   # `ban report` as a DataFrame
    h = api.history("runs/quickstart/<run-id>")         # the per-epoch events
    net = api.load_model("runs/quickstart/<run-id>", 3) # BAN-3's trained nn.Module, in eval mode

`path_or_glob` is a runs directory, a run directory, or a glob of either ("runs/*/2026*").
Everything but `load_model` reads events.jsonl and experiment.toml only: no torch is imported
(pandas is; it is the extra `ban[api]`: an optional dependency, since the engine on a GPU box
and the TUI need none of it). The report is `ban report`'s (ban_tui/report.py `collect`, the
one place its statistics live): this module is a front end like the CLI, and the only module of
engine/ that imports from the manager, lazily and torch-free (tests/test_layering.py allows
exactly that edge).
"""
from __future__ import annotations

import glob as globbing
from pathlib import Path

from engine.events import read_events
from engine.runs import RunPaths, RunState, gen_label, is_run_dir, list_runs, load_state, snapshot_experiment

ENVELOPE = ("v", "seq", "ts", "run", "kind")


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("engine.api needs pandas, which is not installed; install it with: pip install 'ban[api]'") from None
    return pandas


def run_dirs(path_or_glob="runs", experiment: str | None = None) -> list[Path]:
    """The run directories a path or glob names (runs directories expanded), oldest first."""
    found = []
    for p in sorted(globbing.glob(str(path_or_glob))) or [str(path_or_glob)]:
        p = Path(p)
        found += [p] if is_run_dir(p) else list_runs(p) if p.is_dir() else []
    found = list(dict.fromkeys(found))
    if experiment is not None:
        found = [d for d in found if (load_state(d).experiment or d.parent.name) == experiment]
    return found


def flatten(table: dict, prefix: str = "") -> dict:
    """{"dataset": {"name": "digits"}} -> {"dataset.name": "digits"} (lists kept as values)."""
    out = {}
    for k, v in table.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def runs(path_or_glob="runs", experiment: str | None = None):
    """One row per run x generation and per run x ensemble: the run (experiment/run-id, dir,
    seed, status, `config`: ban report's grouping key), the row (`kind` generation/ensemble,
    `label` Teacher/BAN-k/Ens*k, gen, k), its final metrics, and the run's config flattened
    (`config.dataset.name`, ...; generation rows add their own `gen.model`, `gen.objective`, ...)."""
    pd = _pandas()
    from ban_tui.report import config_key   # the report's grouping key (see the module docstring)
    rows = []
    for d in run_dirs(path_or_glob, experiment):
        events = read_events(RunPaths(d).events)
        state = RunState().extend(events) if events else load_state(d)
        exp = snapshot_experiment(d)
        gens = (exp or {}).get("generation", [])
        shared = flatten({k: v for k, v in (exp or {}).items() if k != "generation"}, "config.")
        base = {"run": f"{d.parent.name}/{state.run_id or d.name}", "dir": str(d),
                "experiment": state.experiment or d.parent.name, "seed": state.seed, "status": state.status(),
                "config": config_key(exp, events)}
        for gen, g in sorted(state.gens.items()):
            own = flatten(gens[gen], "gen.") if gen < len(gens) and isinstance(gens[gen], dict) else {}
            rows.append({**base, "kind": "generation", "label": gen_label(gen), "gen": gen, "k": None,
                         "objective": g.objective, "model": g.model, "params": g.params, "teacher": g.teacher,
                         "epochs": g.epochs, "done": g.done, **(g.final or {}), **shared, **own})
        for k, e in sorted(state.ensembles.items()):
            rows.append({**base, "kind": "ensemble", "label": f"Ens*{k}", "gen": None, "k": k, "members": e.get("members"),
                         **{m: v for m, v in e.items() if m.startswith(("test_", "val_"))}, **shared})
    return pd.DataFrame(rows)


def report(path_or_glob="runs", experiment: str | None = None):
    """`ban report --format json` as a DataFrame: one row per (experiment, config, column), with
    the column's mean, std, n, seeds and values, and the paired difference against the teacher
    (vs_teacher_mean, _std, _n, _ci_low, _ci_high) and, for a chain's Ens*k, against its
    independent-CE control (vs_control_...). `.attrs` holds the runs left out and the warnings."""
    pd = _pandas()
    from ban_tui.report import collect   # the one place the report's statistics live
    rep = collect(dict.fromkeys(run_dirs(path_or_glob, experiment)))
    rows = []
    for e in rep["experiments"]:
        for label, col in e["columns"].items():
            row = {"experiment": e["name"], "config": e["config"], "metric": e["metric"], "control": e["control"],
                   "column": label, **{k: col[k] for k in ("mean", "std", "n", "seeds", "values")}}
            for side in ("vs_teacher", "vs_control"):
                d = col.get(side) or {}
                row.update({f"{side}_{k}": d.get(k) for k in ("mean", "std", "n")})
                ci = d.get("ci") or (None, None)
                row[f"{side}_ci_low"], row[f"{side}_ci_high"] = ci
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(dropped=rep["dropped"], warnings=rep["warnings"])
    return df


def find(run) -> Path:
    """A run directory from a path (or the single run a glob names)."""
    dirs = run_dirs(run)
    if len(dirs) != 1:
        raise ValueError(f"{run}: expected one run directory, found {len(dirs)}")
    return dirs[0]


def history(run):
    """The run's epoch events as a DataFrame (one row per generation x epoch; `diagnostics`
    flattened to diagnostics.NAME columns)."""
    pd = _pandas()
    rows = [flatten({k: v for k, v in e.items() if k not in ENVELOPE})
            for e in read_events(RunPaths(find(run)).events) if e.get("kind") == "epoch"]
    return pd.DataFrame(rows)


def load_model(run, generation: int):
    """Generation `generation`'s trained model (checkpoints/gen-<k>.pt) as the nn.Module the run
    built, on the CPU, in eval mode. Imports torch and the engine's models (a model by reference
    needs its package importable, as for `ban resume`)."""
    from engine import catalog, checkpoint, spec
    from engine.models import build
    root = find(run)
    path = RunPaths(root).gen_checkpoint(generation)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: generation {generation} has no final checkpoint (not trained, or still training)")
    saved = checkpoint.load(path)
    exp = next(iter(spec.load(RunPaths(root).snapshot).experiments.values()))
    if exp.dataset.name in catalog.LM_DATASETS:   # its sizes come with the corpus (the vocabulary)
        from engine.chain import load_task
        args = {k: v for k, v in load_task(exp, exp.seeds[0]).model_args().items() if k != "num_classes"}
    else:
        from engine.data import describe
        args = {"in_channels": describe(exp.dataset).in_channels}
    model = build(saved["model"], saved["num_classes"], **args, **saved.get("model_options", {}))
    model.load_state_dict(saved["state_dict"])
    return model.eval()
