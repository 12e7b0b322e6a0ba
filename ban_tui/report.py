"""Paper-style result tables that never mix runs.

Grouping: runs are grouped by (experiment name, configuration), the configuration being a hash
of the run's resolved `experiment.toml` snapshot without the keys that do not change what is
trained (`NOT_CONFIG`: the seed list, device, runs_dir, host, description) together with what
its run_start says it resolved to (the device type and each generation's precision: a bf16 and
an fp32 run of one config are never pooled); a run without a snapshot falls back to its
run_start `config_hash`. An experiment name that covers several configurations gives one group
per configuration and a warning; a group whose runs ran on different device models (CPU or GPU
names) or thread counts is reported with a warning.

Selection: one run per seed in each group, the latest (by start time) that ended ok. Every other
run is left out with its reason (`dropped`): it did not end ok (failed, cancelled, running,
dead, stale), or a later ok run of the same seed replaced it.

Labels: Teacher, then each student by its objective (BAN-k, BAN+L-k, CWTM-k, DKPP-k; CE-k and
LS-k without a teacher), Ens*k.

Numbers: for each generation and ensemble, over the group's seeds, the mean ± std (ddof 1; n/a
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

import numpy as np

from engine.catalog import CONTROL_SUFFIX
from engine.events import read_events
from engine.spec.schema import numbers_key
from engine.runs import RunPaths, RunState, group_hash, load_state, snapshot_experiment
from ban_tui import inference
from ban_tui.tables import ensemble_value, metric_name, render_plain

LEVEL = inference.LEVEL


# ---- statistics (the formulas: ban_tui/inference.py) ------------------------------------------

t_quantile = inference.t_quantile


def stats(values: list[float]) -> dict:
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None   # n < 2: no spread to tell
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def paired(a: dict, b: dict, errors_a: dict | None = None, errors_b: dict | None = None,
           boot: tuple[int, int] = (inference.BOOTSTRAP_B, inference.BOOTSTRAP_SEED)) -> dict | None:
    """a - b over the seeds both have ({seed: value} each): mean, std, n, 95 % t interval `ci`,
    its two-sided p, the minimum detectable effect `mde` (80 % power), and the 95 % paired
    bootstrap interval over seeds x test examples `boot_ci` where every one of those seeds has
    per-example errors of both sides ({seed: bool array}) on one test set (else None)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    out = {**stats(d), "seeds": seeds, **inference.t_interval(d), "boot_ci": None}
    out["mde"] = inference.mde(out["std"], len(d))
    if len(d) > 1 and errors_a and errors_b and all(s in errors_a and s in errors_b for s in seeds):
        rows = [errors_a[s].astype(np.int8) - errors_b[s].astype(np.int8) for s in seeds]
        if len({r.shape for r in rows}) == 1:
            out["boot_ci"] = inference.paired_bootstrap(np.stack(rows), *boot)
    return out


def judge(claims: list[dict]) -> None:
    """Holm-adjust the p-values of one report group's paired differences (in place: `p_holm`)
    and give each its verdict: "lower" / "higher" where the adjusted p < 0.05 and the bootstrap
    interval (where there is one) excludes 0, else "n.s." (not resolved at this n: see `mde`)."""
    for c, adj in zip(claims, inference.holm([c["p"] for c in claims])):
        c["p_holm"] = adj
        boot_clear = c["boot_ci"] is None or c["boot_ci"][0] > 0 or c["boot_ci"][1] < 0
        c["verdict"] = ("lower" if c["mean"] < 0 else "higher") if (
            adj is not None and adj < inference.ALPHA and boot_clear) else "n.s." if adj is not None else ""


# ---- grouping and selection ------------------------------------------------------------------

def ran(events: list[dict]) -> list[dict]:
    """What changes the numbers beside the config, per run_start (a resume may run elsewhere):
    the device type and each generation's resolved precision (engine.spec.schema.numbers_key);
    a run from before run_start recorded them gives its device type only."""
    out = []
    for e in events:
        if e.get("kind") == "run_start":
            key = (numbers_key(e["resolved"]) if e.get("resolved")
                   else {"device_type": str(e.get("device") or "").split(":")[0] or None})
            if key not in out:
                out.append(key)
    return out


def config_key(exp: dict | None, events: list[dict]) -> str:
    """The hash of what was trained: the snapshot's experiment table (engine.runs.snapshot_experiment)
    minus engine.runs.NOT_CONFIG, with the resolved precisions and device type of its run_start
    events (`ran`): engine.runs.group_hash. Without a snapshot, run_start's group_hash (the same
    hash, recorded by the engine), so a run whose snapshot was deleted stays in its group; else
    run_start's config_hash (which counts the resolved precisions too)."""
    start = next((e for e in events if isinstance(e, dict) and e.get("kind") == "run_start"), {})
    if exp is None and start.get("group_hash"):
        return str(start["group_hash"])
    if exp is None:
        return str(start.get("config_hash") or "unknown")
    return group_hash(exp, ran(events))


def hardware_of(events: list[dict]) -> tuple[str | None, int | None]:
    """(device model, threads) of a run's first run_start: the GPU's name, else the CPU's."""
    start = next((e for e in events if e.get("kind") == "run_start"), {})
    m = start.get("machine") or {}
    return m.get("gpu") or m.get("cpu"), start.get("threads")


def mixed_hardware(name: str, config: str, seeds: dict) -> list[str]:
    """Warnings for a group whose runs ran on different device models or thread counts (the
    numbers of one config can differ there: other kernels, other reduction orders)."""
    out = []
    for what, i in (("device models", 0), ("thread counts", 1)):
        seen = sorted({str(r["hardware"][i]) for r in seeds.values() if r["hardware"][i] is not None})
        if len(seen) > 1:
            out.append(f"experiment {name!r} ({config}) mixes {what}: {', '.join(seen)}")
    return out


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
                     "config": config_key(snapshot_experiment(d), events), "hardware": hardware_of(events), "id": f"{d.parent.name}/{state.run_id or d.name}"})
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
    for (name, config), seeds in groups.items():
        warnings += mixed_hardware(name, config, seeds)
    return groups, dropped, warnings


# ---- the report ------------------------------------------------------------------------------

def column_order(label: str):
    """Teacher, BAN-1, BAN-2, ..., CE-1, ..., LS-1, ..., Ens*2, Ens*3, ..."""
    k = int(re.sub(r"\D", "", label) or 0)
    rank = {"Teacher": 0, "BAN": 1, "CE": 2, "Ens": 4}
    return (rank.get(re.split(r"[-*]", label)[0], 3), k)


def column_label(gen: int, objective: str, teacher: int | None = None) -> str:
    """Teacher; a student by the objective it trained with: BAN-k (ban), BAN+L-k, CWTM-k, DKPP-k,
    and CE-k / LS-k for the teacher-free ones (a cwtm student is no BAN); a student taught by
    another than the previous generation says by whom: "BAN-4 (of Teacher)" (Table 2's BAN column)."""
    if gen == 0:
        return "Teacher"
    label = f"{'BAN' if objective == 'ban' else objective.upper()}-{gen}"
    return label if teacher is None or teacher == gen - 1 else f"{label} (of {'Teacher' if teacher == 0 else f'gen {teacher}'})"


def group_values(seeds: dict) -> tuple[str, dict]:
    """(metric, {label: {seed: value}}) of one group's selected runs."""
    metric = next(iter(seeds.values()))["state"].metric
    values: dict[str, dict] = {}
    for seed, r in seeds.items():
        s = r["state"]
        for gen, g in s.gens.items():
            if g.test is not None:
                values.setdefault(column_label(gen, g.objective, g.teacher), {})[seed] = g.test
        for k, e in s.ensembles.items():
            if ensemble_value(e, metric) is not None:
                values.setdefault(f"Ens*{k}", {})[seed] = ensemble_value(e, metric)
    return metric, values


def group_errors(seeds: dict) -> dict:
    """{label: {seed: per-test-example error (bool array)}} from the runs' stored probabilities
    (probs/gen-k.npy, and an ensemble's members averaged as the engine does) and test labels
    (probs/labels.npy); only seeds whose labels equal the first seed's (one test set), and only
    classifier runs. Missing files leave a label or seed out: its bootstrap is then n/a."""
    out: dict[str, dict] = {}
    first = None
    for seed, r in sorted(seeds.items()):
        paths, s = RunPaths(r["dir"]), r["state"]
        if s.metric != "err" or not paths.test_labels.is_file():
            continue
        try:
            y = np.load(paths.test_labels)
            if first is None:
                first = y
            if y.shape != first.shape or not np.array_equal(y, first):
                continue
            probs = {g: np.load(paths.gen_probs(g)) for g in s.gens if paths.gen_probs(g).is_file()}
        except (OSError, ValueError):
            continue
        for gen, g in s.gens.items():
            if gen in probs and probs[gen].shape[0] == len(y):
                out.setdefault(column_label(gen, g.objective, g.teacher), {})[seed] = probs[gen].argmax(1) != y
        for k, e in s.ensembles.items():
            members = e.get("members") or []
            if members and all(m in probs and probs[m].shape[0] == len(y) for m in members):
                mean = np.mean(np.stack([probs[m].astype(np.float64) for m in members]), axis=0)
                out.setdefault(f"Ens*{k}", {})[seed] = mean.argmax(1) != y
    return out


def collect(run_dirs, bootstrap: int = inference.BOOTSTRAP_B, boot_seed: int = inference.BOOTSTRAP_SEED) -> dict:
    """{"experiments": [...], "dropped": [...], "warnings": [...], "bootstrap": {"B", "seed"}}; each
    experiment: name, config, metric, control (bool), n, seeds, runs, columns {label: {mean, std,
    n, values, seeds, vs_teacher, vs_control}} (vs_control: a chain's BAN-k against its control's
    CE-k, its Ens*k against the control's Ens*k, when the control was run). Each paired
    difference (`paired`) has its t and bootstrap intervals, and after Holm's adjustment over
    the group's differences (a chain's with its control pairs) `p_holm` and a `verdict`."""
    groups, dropped, warnings = select(load_runs(run_dirs))
    boot = (bootstrap, boot_seed)
    experiments = []
    for (name, config), seeds in groups.items():
        control = is_control(next(iter(seeds.values()))["state"])
        metric, values = group_values(seeds)
        errors = group_errors(seeds) if bootstrap > 0 else {}
        teacher = values.get("Teacher", {})
        columns = {}
        for label in sorted(values, key=column_order):
            v = values[label]
            columns[label] = {**stats([v[s] for s in sorted(v)]), "seeds": sorted(v),
                              "vs_teacher": paired(v, teacher, errors.get(label), errors.get("Teacher"), boot)
                              if label != "Teacher" else None}
        experiments.append({"name": name, "config": config, "metric": metric_name(metric), "control": control,
                            "n": len(seeds), "seeds": sorted(seeds), "runs": [seeds[s]["id"] for s in sorted(seeds)],
                            "columns": columns, "_values": values, "_errors": errors})
    attach_controls(experiments, boot)
    for e in experiments:
        judge([d for col in e["columns"].values() for d in (col.get("vs_teacher"), col.get("vs_control")) if d])
        e.pop("_values")
        e.pop("_errors")
    return {"experiments": experiments, "dropped": dropped, "warnings": warnings,
            "bootstrap": {"B": bootstrap, "seed": boot_seed}}


def control_label(label: str) -> str | None:
    """The control's column a chain's column is paired with: a student of generation k with
    CE-k (an independent CE model of another seed), Ens*k with the control's Ens*k."""
    if label.startswith("Ens*"):
        return label
    k = label.rsplit("-", 1)[-1]
    return f"CE-{k}" if label != "Teacher" and k.isdigit() else None


def attach_controls(experiments: list[dict], boot: tuple[int, int]) -> None:
    """Order each control after its chain and pair the chain's students and ensembles with the
    control's (control_label)."""
    chains = {e["name"]: e for e in experiments if not e["control"]}
    ordered = []
    for e in experiments:
        if e["control"] and e["name"].removesuffix(CONTROL_SUFFIX) in chains:
            chain = chains[e["name"].removesuffix(CONTROL_SUFFIX)]
            e["control_of"] = chain["name"]
            for label, col in chain["columns"].items():
                other = control_label(label)
                if other in e["_values"]:
                    col["vs_control"] = paired(chain["_values"][label], e["_values"][other],
                                               chain["_errors"].get(label), e["_errors"].get(other), boot)
                    col["control_column"] = other
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
    return f"{col['mean'] * f:.2f} ± " + (f"{col['std'] * f:.2f}" if col["std"] is not None else "n/a")


def diff_cell(d: dict | None, metric: str) -> str:
    """+0.42 [-0.10, +0.94]: a paired mean difference and its 95 % Student-t interval over seeds."""
    if not d:
        return ""
    f = scale(metric)
    ci = f" [{d['ci'][0] * f:+.2f}, {d['ci'][1] * f:+.2f}]" if d["ci"] else " [n/a: n<2]"
    return f"{d['mean'] * f:+.2f}{ci}"


def boot_cell(d: dict | None, metric: str) -> str:
    """[-0.30, +1.20]: the paired bootstrap interval over seeds x test examples (n/a without it)."""
    if not d:
        return ""
    f = scale(metric)
    return f"[{d['boot_ci'][0] * f:+.2f}, {d['boot_ci'][1] * f:+.2f}]" if d.get("boot_ci") else "n/a"


def p_cell(d: dict | None) -> str:
    return "" if not d else "n/a" if d.get("p_holm") is None else f"{d['p_holm']:.3g}"


def mde_cell(d: dict | None, metric: str) -> str:
    return "" if not d else "n/a" if d.get("mde") is None else f"{d['mde'] * scale(metric):.2f}"


COLUMNS = [("experiment", "experiment"), ("config", "config"), ("metric", "metric"), ("n", "n"),
           ("column", ""), ("value", "mean ± std"),
           ("vs_teacher", "Δ vs Teacher [95% t CI, seeds]"),
           ("vs_teacher_boot", "Δ vs Teacher [95% bootstrap CI, seeds×test]"),
           ("vs_teacher_p", "Holm p"), ("vs_teacher_mde", "MDE 80%"), ("vs_teacher_verdict", "verdict"),
           ("vs_control", "Δ vs independent CE [95% t CI, seeds]"),
           ("vs_control_boot", "Δ vs independent CE [95% bootstrap CI, seeds×test]"),
           ("vs_control_p", "Holm p "), ("vs_control_verdict", "verdict ")]
CONTROL_KEYS = ("vs_control", "vs_control_boot", "vs_control_p", "vs_control_verdict")


def comparison_cells(key: str, d: dict | None, metric: str) -> dict:
    return {key: diff_cell(d, metric), f"{key}_boot": boot_cell(d, metric), f"{key}_p": p_cell(d),
            f"{key}_mde": mde_cell(d, metric), f"{key}_verdict": (d or {}).get("verdict", "")}


def rows(report: dict) -> list[dict]:
    """One row per (group, generation or ensemble); errors in percent points."""
    out = []
    for e in report["experiments"]:
        metric = e["metric"]
        name = e["name"] + (" (independent CE control)" if e["control"] else "")
        for label, col in e["columns"].items():
            other = col.get("control_column")
            out.append({"experiment": name, "config": e["config"],
                        "metric": "err %" if metric == "test_err" else "ppl", "n": col["n"],
                        "column": label + (f" (vs {other})" if other and other != label else ""),
                        "value": cell(col, metric),
                        **comparison_cells("vs_teacher", col.get("vs_teacher"), metric),
                        **comparison_cells("vs_control", col.get("vs_control"), metric)})
    return out


def table(report: dict) -> tuple[list[tuple[str, str]], list[dict]]:
    """(columns, rows) of the human table (the control's columns only when a control was run)."""
    r = rows(report)
    shown = [c for c in COLUMNS if c[0] not in CONTROL_KEYS or any(x["vs_control"] for x in r)]
    return shown, r


def legend(report: dict) -> str:
    """What the columns are, under every human format."""
    b = report.get("bootstrap") or {}
    return ("Δ: paired mean difference over the seeds both have (negative: lower than the other side). "
            "t CI: 95 % Student-t interval over seeds (seed noise only). "
            f"bootstrap CI: 95 % paired bootstrap over seeds × test examples from probs/ (B {b.get('B')}, "
            f"seed {b.get('seed')}). Holm p: paired-t p-value, Holm-adjusted over the group's differences. "
            "MDE 80%: the smallest |Δ| a paired t-test (α 0.05) detects with 80 % power at this n and sd. "
            "verdict: lower/higher where Holm p < 0.05 and the bootstrap CI excludes 0, else n.s. "
            "(see docs/statistics.md)")


def notes(report: dict) -> list[str]:
    """The legend, the warnings and the runs left out, one line each (under every human format)."""
    lines = [legend(report)] if report["experiments"] else []
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += [f"left out {d['run']} (seed {d['seed']}): {d['reason']}" for d in report["dropped"]]
    return lines


def power_lines(report: dict, effect: float) -> list[str]:
    """`ban report --effect D`: the seeds each paired difference needs to resolve D points (D in
    percent points for errors), from its observed per-seed sd."""
    out = []
    for e in report["experiments"]:
        f = scale(e["metric"])
        for label, col in e["columns"].items():
            for key, against in (("vs_teacher", "Teacher"), ("vs_control", col.get("control_column"))):
                d = col.get(key)
                if not d:
                    continue
                n = inference.seeds_needed(effect / f, d["std"])
                need = f"{n} seeds" if n else "n/a (no sd: n < 2 or identical differences)"
                out.append(f"{e['name']} {label} - {against}: sd {d['std'] * f:.2f} over {d['n']} seeds"
                           f" → {need} to resolve {effect:g} at 80 % power"
                           if d["std"] is not None else f"{e['name']} {label} - {against}: {need}")
    return out


def to_text(report: dict) -> str:
    return "\n".join([render_plain(*table(report))] + notes(report))


def to_markdown(report: dict) -> str:
    columns, body = table(report)
    text = ("experiment", "config", "metric", "column", "vs_teacher_verdict", "vs_control_verdict")
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in text else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r[k]) for k, _ in columns) + " |" for r in body]
    extra = notes(report)
    return "\n".join(lines + ([""] + [f"- {x}" for x in extra] if extra else []))


def to_csv(report: dict) -> str:
    """experiment, config, metric, column, n, mean, std, then per comparison (against the teacher,
    against the control; errors in percent points): mean, t CI low/high, bootstrap CI low/high,
    p, Holm-adjusted p, MDE, verdict."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    fields = ["", "_lo", "_hi", "_boot_lo", "_boot_hi", "_p", "_p_holm", "_mde", "_verdict"]
    w.writerow(["experiment", "config", "control", "metric", "column", "n", "mean", "std"]
               + [k + x for k in ("vs_teacher", "vs_control") for x in fields])
    num = lambda x, f=1.0: "" if x is None else f"{x * f:.4f}"
    for e in report["experiments"]:
        f = scale(e["metric"])
        unit = "test_err %" if e["metric"] == "test_err" else "test_ppl"
        for label, col in e["columns"].items():
            row = [e["name"], e["config"], int(e["control"]), unit, label, col["n"], num(col["mean"], f), num(col["std"], f)]
            for key in ("vs_teacher", "vs_control"):
                d = col.get(key)
                if not d:
                    row += [""] * len(fields)
                    continue
                ci, boot = d["ci"] or [None, None], d["boot_ci"] or [None, None]
                row += [num(d["mean"], f), num(ci[0], f), num(ci[1], f), num(boot[0], f), num(boot[1], f),
                        "" if d["p"] is None else f"{d['p']:.6g}", "" if d.get("p_holm") is None else f"{d['p_holm']:.6g}",
                        num(d["mde"], f), d.get("verdict", "")]
            w.writerow(row)
    return out.getvalue().rstrip("\n")
