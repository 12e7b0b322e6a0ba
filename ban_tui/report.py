"""Paper-style result tables that never mix runs.

Grouping: runs are grouped by (experiment name, configuration), the configuration being a hash
of the run's resolved `experiment.toml` snapshot without the keys that do not change what is
trained (`NOT_CONFIG`: the seed list, device, runs_dir, host, description); a run without a
snapshot falls back to its run_start `config_hash`. An experiment name that covers several
configurations gives one group per configuration and a warning.

Selection: one run per seed in each group, the latest (by start time) that ended ok. Every other
run is left out with its reason (`dropped`): it did not end ok (failed, cancelled, running,
dead, stale), or a later ok run of the same seed replaced it.

Numbers: for each generation and ensemble, over the group's seeds, the mean ± std (ddof 1; 0
with one seed) of the final (last-epoch) test error or perplexity, n, and the **paired**
per-seed difference against the teacher of the same seed: mean difference, its std, n and a
95 % Student-t confidence interval, mean ± t(0.975, n-1) · std / √n (none with n < 2).
A negative difference means lower error than the teacher.

Controls: a group whose students all train by `ce` with no teacher (independent CE models from
fresh seeds) is a control; its single models are labelled CE-k. It is printed right after the
chain named by its name minus the `+ce` suffix (`control = "independent"`, engine/spec/checks.py), and that chain's Ens*k carries a paired difference against the control's Ens*k.
"""
from __future__ import annotations

import csv
import io
import math
import re
import statistics
from pathlib import Path

from engine.catalog import CONTROL_SUFFIX
from engine.events import read_events
from engine.runs import RunPaths, RunState, group_hash, load_state, gen_label, snapshot_experiment
from ban_tui.tables import ensemble_value, metric_name, render_plain

LEVEL = 0.95


# ---- statistics -----------------------------------------------------------------------------

def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (scipy's, imported lazily)."""
    from scipy.stats import t
    return float(t.ppf(p, df))


def stats(values: list[float]) -> dict:
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def paired(a: dict, b: dict) -> dict | None:
    """a - b over the seeds both have ({seed: value} each): mean, std, n, 95 % t interval."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    out = {**stats(d), "seeds": seeds, "ci": None}
    if len(d) > 1:
        half = t_quantile(0.5 + LEVEL / 2, len(d) - 1) * out["std"] / math.sqrt(len(d))
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


# ---- grouping and selection ------------------------------------------------------------------

def config_key(exp: dict | None, events: list[dict]) -> str:
    """The hash of what was trained: the snapshot's experiment table (engine.runs.snapshot_experiment)
    minus engine.runs.NOT_CONFIG; run_start's group_hash first (the same hash, recorded by the engine), so
    a run whose snapshot was deleted stays in its group; else run_start's config_hash."""
    start = next((e for e in events if isinstance(e, dict) and e.get("kind") == "run_start"), {})
    if start.get("group_hash"):   # what the engine recorded from the snapshot (engine.runs.group_hash)
        return str(start["group_hash"])
    if exp is None:
        return str(start.get("config_hash") or "unknown")
    return group_hash(exp)


def is_control(state: RunState) -> bool:
    """Every student trains by plain cross-entropy with no teacher: independent models."""
    students = [g for gen, g in state.gens.items() if gen > 0]
    return bool(students) and all(g.objective == "ce" and g.teacher is None for g in students)


def load_runs(run_dirs) -> list[dict]:
    runs = []
    for d in run_dirs:
        d = Path(d)
        events = read_events(RunPaths(d).events)
        state = RunState().extend(events) if events else load_state(d)
        runs.append({"dir": d, "state": state, "name": state.experiment or d.parent.name,
                     "config": config_key(snapshot_experiment(d), events), "id": f"{d.parent.name}/{state.run_id or d.name}"})
    return runs


def select(runs: list[dict]) -> tuple[dict, list[dict], list[str]]:
    """({(name, config): {seed: run}}, dropped, warnings): the latest ok run per seed."""
    groups: dict[tuple, dict] = {}
    dropped = []
    for r in sorted(runs, key=lambda r: (r["state"].started or 0, r["id"])):
        s = r["state"]
        status = s.status()
        if status != "ok":
            dropped.append({"run": r["id"], "seed": s.seed, "config": r["config"], "reason": f"ended {status}"
                            if s.end else f"not ended ({status})"})
            continue
        seeds = groups.setdefault((r["name"], r["config"]), {})
        if s.seed in seeds:
            old = seeds[s.seed]
            dropped.append({"run": old["id"], "seed": s.seed, "config": r["config"],
                            "reason": f"seed {s.seed} again: the later ok run {r['id']} is reported"})
        seeds[s.seed] = r
    warnings = []
    by_name: dict[str, list] = {}
    for name, config in groups:
        by_name.setdefault(name, []).append(config)
    for name, configs in by_name.items():
        if len(configs) > 1:
            sizes = ", ".join(f"{c} ({len(groups[(name, c)])} seeds)" for c in configs)
            warnings.append(f"experiment {name!r} covers {len(configs)} configurations, reported "
                            f"separately: {sizes}")
    return groups, dropped, warnings


# ---- the report ------------------------------------------------------------------------------

def column_order(label: str):
    """Teacher, BAN-1, BAN-2, ..., CE-1, ..., LS-1, ..., Ens*2, Ens*3, ..."""
    k = int(re.sub(r"\D", "", label) or 0)
    rank = {"Teacher": 0, "BAN": 1, "CE": 2, "Ens": 4}
    return (rank.get(re.split(r"[-*]", label)[0], 3), k)


def group_values(seeds: dict) -> tuple[str, dict]:
    """(metric, {label: {seed: value}}) of one group's selected runs."""
    metric = next(iter(seeds.values()))["state"].metric
    values: dict[str, dict] = {}
    for seed, r in seeds.items():
        s = r["state"]
        for gen, g in s.gens.items():
            if g.test is not None:   # a student without a teacher is no BAN: CE-k, LS-k
                label = f"{g.objective.upper()}-{gen}" if gen > 0 and g.teacher is None else gen_label(gen)
                values.setdefault(label, {})[seed] = g.test
        for k, e in s.ensembles.items():
            if ensemble_value(e, metric) is not None:
                values.setdefault(f"Ens*{k}", {})[seed] = ensemble_value(e, metric)
    return metric, values


def collect(run_dirs) -> dict:
    """{"experiments": [...], "dropped": [...], "warnings": [...]}; each experiment: name, config,
    metric, control (bool), n, seeds, runs, columns {label: {mean, std, n, values, seeds,
    vs_teacher, vs_control}} (vs_control on a chain's Ens*k when its control was run)."""
    groups, dropped, warnings = select(load_runs(run_dirs))
    experiments = []
    for (name, config), seeds in groups.items():
        control = is_control(next(iter(seeds.values()))["state"])
        metric, values = group_values(seeds)
        teacher = values.get("Teacher", {})
        columns = {}
        for label in sorted(values, key=column_order):
            v = values[label]
            columns[label] = {**stats([v[s] for s in sorted(v)]), "seeds": sorted(v),
                              "vs_teacher": paired(v, teacher) if label != "Teacher" else None}
        experiments.append({"name": name, "config": config, "metric": metric_name(metric), "control": control,
                            "n": len(seeds), "seeds": sorted(seeds), "runs": [seeds[s]["id"] for s in sorted(seeds)],
                            "columns": columns, "_values": values})
    attach_controls(experiments)
    for e in experiments:
        e.pop("_values")
    return {"experiments": experiments, "dropped": dropped, "warnings": warnings}


def attach_controls(experiments: list[dict]) -> None:
    """Order each control after its chain and pair the chain's Ens*k with the control's."""
    chains = {e["name"]: e for e in experiments if not e["control"]}
    ordered = []
    for e in experiments:
        if e["control"] and e["name"].removesuffix(CONTROL_SUFFIX) in chains:
            chain = chains[e["name"].removesuffix(CONTROL_SUFFIX)]
            e["control_of"] = chain["name"]
            for label, col in chain["columns"].items():
                if label.startswith("Ens*") and label in e["_values"]:
                    col["vs_control"] = paired(chain["_values"][label], e["_values"][label])
        else:
            ordered.append(e)
    for e in experiments:
        if e.get("control_of"):
            at = next(i for i, c in enumerate(ordered) if c["name"] == e["control_of"])
            while at + 1 < len(ordered) and ordered[at + 1]["name"] == e["control_of"]:
                at += 1
            ordered.insert(at + 1, e)
    experiments[:] = ordered


# ---- formats ---------------------------------------------------------------------------------

def scale(metric: str) -> float:
    return 100.0 if metric == "test_err" else 1.0


def cell(col: dict | None, metric: str) -> str:
    if not col or col["mean"] is None:
        return ""
    f = scale(metric)
    return f"{col['mean'] * f:.2f} ± {col['std'] * f:.2f}"


def diff_cell(d: dict | None, metric: str) -> str:
    """+0.42 [-0.10, +0.94] (n 3): a paired mean difference and its 95 % interval."""
    if not d:
        return ""
    f = scale(metric)
    ci = f" [{d['ci'][0] * f:+.2f}, {d['ci'][1] * f:+.2f}]" if d["ci"] else " [n<2: no CI]"
    return f"{d['mean'] * f:+.2f}{ci}"


COLUMNS = [("experiment", "experiment"), ("config", "config"), ("metric", "metric"), ("n", "n"),
           ("column", ""), ("value", "mean ± std"), ("vs_teacher", "paired Δ vs Teacher [95% CI]"),
           ("vs_control", "paired Δ vs independent-CE Ens [95% CI]")]


def rows(report: dict) -> list[dict]:
    """One row per (group, generation or ensemble); errors in percent points."""
    out = []
    for e in report["experiments"]:
        metric = e["metric"]
        name = e["name"] + (" (independent CE control)" if e["control"] else "")
        for label, col in e["columns"].items():
            out.append({"experiment": name, "config": e["config"],
                        "metric": "err %" if metric == "test_err" else "ppl", "n": col["n"],
                        "column": label, "value": cell(col, metric),
                        "vs_teacher": diff_cell(col.get("vs_teacher"), metric),
                        "vs_control": diff_cell(col.get("vs_control"), metric)})
    return out


def table(report: dict) -> tuple[list[tuple[str, str]], list[dict]]:
    """(columns, rows) of the human table."""
    r = rows(report)
    shown = [c for c in COLUMNS if c[0] != "vs_control" or any(x["vs_control"] for x in r)]
    return shown, r


def notes(report: dict) -> list[str]:
    """The warnings and the runs left out, one line each (printed under every human format)."""
    lines = [f"warning: {w}" for w in report["warnings"]]
    lines += [f"left out {d['run']} (seed {d['seed']}): {d['reason']}" for d in report["dropped"]]
    return lines


def to_text(report: dict) -> str:
    return "\n".join([render_plain(*table(report))] + notes(report))


def to_markdown(report: dict) -> str:
    columns, body = table(report)
    text = ("experiment", "config", "metric", "column")
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in text else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r[k]) for k, _ in columns) + " |" for r in body]
    extra = notes(report)
    return "\n".join(lines + ([""] + [f"- {x}" for x in extra] if extra else []))


def to_csv(report: dict) -> str:
    """experiment, config, metric, column, n, mean, std, then the paired differences (errors in
    percent points): mean, CI low, CI high against the teacher and against the control."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["experiment", "config", "control", "metric", "column", "n", "mean", "std",
                "vs_teacher", "vs_teacher_lo", "vs_teacher_hi", "vs_control", "vs_control_lo", "vs_control_hi"])
    for e in report["experiments"]:
        f = scale(e["metric"])
        unit = "test_err %" if e["metric"] == "test_err" else "test_ppl"
        for label, col in e["columns"].items():
            row = [e["name"], e["config"], int(e["control"]), unit, label, col["n"],
                   f"{col['mean'] * f:.4f}", f"{col['std'] * f:.4f}"]
            for key in ("vs_teacher", "vs_control"):
                d = col.get(key)
                row += ([f"{d['mean'] * f:.4f}"] + ([f"{x * f:.4f}" for x in d["ci"]] if d["ci"] else ["", ""])
                        if d else ["", "", ""])
            w.writerow(row)
    return out.getvalue().rstrip("\n")
