"""Paper-style result tables: one row per experiment, a column per generation and ensemble.

Each cell is the mean ± std over seeds (the experiment's runs that ended ok; std with ddof=1
where there are two or more values, else 0) of the final (last-epoch) test error or perplexity,
as RunState computes it. `collect` gives the raw numbers (the json format); the human formats
show errors in percent.
"""
from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path

from engine.runs import load_state, gen_label
from ban_tui.tables import ensemble_value, metric_name, render_plain


def stats(values: list[float]) -> dict:
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return {"mean": mean, "std": std, "values": values}


def column_order(label: str):
    """Teacher, BAN-1, BAN-2, ..., Ens*2, Ens*3, ..."""
    k = int(re.sub(r"\D", "", label) or 0)
    return (0 if label == "Teacher" else 1 if label.startswith("BAN") else 2, k)


def collect(run_dirs) -> dict:
    """{"experiments": [{"name", "metric", "n", "columns": {label: {"mean", "std", "values"}}}]}."""
    groups: dict[str, list] = {}
    for d in run_dirs:
        s = load_state(d)
        if s.end is not None and s.end.get("status") == "ok":
            groups.setdefault(s.experiment or Path(d).parent.name, []).append(s)
    experiments = []
    for name, states in groups.items():
        metric = states[0].metric
        values: dict[str, list] = {}
        for s in states:
            for gen, g in s.gens.items():
                if g.test is not None:
                    values.setdefault(gen_label(gen), []).append(g.test)
            for k, e in s.ensembles.items():
                if ensemble_value(e, metric) is not None:
                    values.setdefault(f"Ens*{k}", []).append(ensemble_value(e, metric))
        columns = {label: stats(values[label]) for label in sorted(values, key=column_order)}
        experiments.append({"name": name, "metric": metric_name(metric), "n": len(states), "columns": columns})
    return {"experiments": experiments}


def scale(metric: str) -> float:
    return 100.0 if metric == "test_err" else 1.0


def cell(col: dict | None, metric: str) -> str:
    if not col or col["mean"] is None:
        return ""
    f = scale(metric)
    return f"{col['mean'] * f:.2f} ± {col['std'] * f:.2f}"


def table(report: dict) -> tuple[list[tuple[str, str]], list[dict]]:
    """(columns, rows) of the human table: errors in percent."""
    labels = sorted({c for e in report["experiments"] for c in e["columns"]}, key=column_order)
    columns = [("experiment", "experiment"), ("metric", "metric"), ("n", "n")] + [(c, c) for c in labels]
    rows = [{"experiment": e["name"], "metric": "err %" if e["metric"] == "test_err" else "ppl", "n": e["n"],
             **{c: cell(e["columns"].get(c), e["metric"]) for c in labels}} for e in report["experiments"]]
    return columns, rows


def to_text(report: dict) -> str:
    return render_plain(*table(report))


def to_markdown(report: dict) -> str:
    columns, rows = table(report)
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in ("experiment", "metric") else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r[k]) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(report: dict) -> str:
    """experiment, metric, n, then mean and std of each column (errors in percent)."""
    labels = sorted({c for e in report["experiments"] for c in e["columns"]}, key=column_order)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["experiment", "metric", "n"] + [x for c in labels for x in (c, f"{c} std")])
    for e in report["experiments"]:
        f = scale(e["metric"])
        row = [e["name"], "test_err %" if e["metric"] == "test_err" else "test_ppl", e["n"]]
        for c in labels:
            col = e["columns"].get(c)
            row += [f"{col['mean'] * f:.4f}", f"{col['std'] * f:.4f}"] if col else ["", ""]
        w.writerow(row)
    return out.getvalue().rstrip("\n")
