"""Rows for every view: a RunState (or a host's status) turned into lists of dicts of display
strings, with their columns ([(key, heading)]) and the statuses' styles and marks.

The CLI renders these rows with rich (or as plain text when stdout is not a terminal) and the
TUI puts them in DataTables (ban_tui.widgets.rows), so "how an error is shown" lives here once.
No rich, no textual: styles are rich style strings.

Errors in events are fractions (0.0421); they are shown in percent ("4.21%").
Perplexities are shown as they are.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.runs import RunState, gen_label

if TYPE_CHECKING:
    from engine.spec import Host
    from ban_tui.remote.gpus import HostStatus


# ---- numbers --------------------------------------------------------------------------------

def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def metric_str(v, metric: str = "err") -> str:
    """A test error (in percent) or a perplexity."""
    if v is None:
        return "-"
    return f"{v:.2f}" if metric == "ppl" else pct(v)


def metric_name(metric: str) -> str:
    return "test_ppl" if metric == "ppl" else "test_err"


def num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def duration(seconds) -> str:
    """12.3s below a minute, else h:mm:ss."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def params_str(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def clock(ts, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "-" if ts is None else time.strftime(fmt, time.localtime(ts))


def gen_eta(g) -> float | None:
    """Seconds left in a generation: its mean epoch time times the epochs still to run."""
    if g.done or not g.epoch or not g.epochs:
        return 0.0 if g.done else None
    return g.seconds / g.epoch * (g.epochs - g.epoch)


def ensemble_value(e: dict, metric: str):
    return e.get(metric_name(metric))


# ---- statuses -------------------------------------------------------------------------------

# How each run status is shown everywhere (CLI tables, the TUI): a rich style and a mark.
STATUS_STYLE = {"running": "bold green", "ok": "bold", "failed": "bold red", "cancelled": "bold yellow",
                "stale": "bold magenta", "dead": "bold red", "preempted": "bold yellow", "removed": "bold red"}
STATUS_MARK = {"running": "●", "ok": "✓", "failed": "✗", "cancelled": "■", "stale": "?", "dead": "✗", "preempted": "■", "removed": "✗"}


def pick(columns: list[tuple[str, str]], *keys: str) -> list[tuple[str, str]]:
    """Some of a table's columns (by key, in that order) for a narrower view of the same rows."""
    found = dict(columns)
    return [(k, found[k]) for k in keys]


# ---- one run --------------------------------------------------------------------------------

# No view shows a test-selected number (the minimum test error over epochs): "test" is the last
# epoch's; "test @ min val" is the test error at the epoch of minimum validation error, shown
# only where there is a validation split (val_split > 0, or a language corpus's valid set).
VAL_SELECTED = ("val_selected", "test @ min val")
GEN_COLUMNS = [("generation", ""), ("objective", "objective"), ("model", "model"),
               ("params", "params"), ("epochs", "epochs"), ("train_loss", "loss"),
               ("test", "test"), VAL_SELECTED, ("time", "time")]


def with_val_selected(columns: list, rows: list[dict]) -> list:
    """The columns, without "test @ min val" when no row has a validation-selected number."""
    return [c for c in columns if c != VAL_SELECTED or any(r.get(c[0], "-") != "-" for r in rows)]


def gen_rows(state: RunState) -> list[dict]:
    """One row per generation (Teacher, BAN-1, ...): final train loss, last-epoch test and the
    validation-selected test ('-' without a validation split)."""
    rows = []
    for gen in sorted(state.gens):
        g = state.gens[gen]
        train_loss = g.final.get("train_loss", g.last.get("train_loss"))
        rows.append({"generation": g.label, "objective": g.objective or "-", "model": g.model or "-",
                     "params": params_str(g.params), "epochs": f"{g.epoch}/{g.epochs}",
                     "train_loss": num(train_loss), "test": metric_str(g.test, g.metric),
                     "val_selected": metric_str(g.val_selected, g.metric), "time": duration(g.seconds)})
    return rows


ENSEMBLE_COLUMNS = [("ensemble", ""), ("members", "members"), ("test", "test"),
                    ("vs_teacher", "vs Teacher")]


def ensemble_rows(state: RunState) -> list[dict]:
    """Ens*k against the teacher (difference in points, or in perplexity). Not against the
    best single generation: picking it by test error would select on the test set."""
    metric = state.metric
    teacher = state.gens[0].test if 0 in state.gens else None
    rows = []
    for k in sorted(state.ensembles):
        e = state.ensembles[k]
        value = ensemble_value(e, metric)
        members = e.get("members") or []
        if value is None or teacher is None:
            delta = "-"
        else:
            delta = f"{(value - teacher) * (1 if metric == 'ppl' else 100):+.2f}"
        rows.append({"ensemble": f"Ens*{k}", "members": ", ".join(gen_label(m) for m in members) or "-",
                     "test": metric_str(value, metric), "vs_teacher": delta})
    return rows



# ---- several runs (the comparison) ----------------------------------------------------------

def run_letter(i: int) -> str:
    """A, B, ..., Z, then A2, B2, ...: the short names of compared runs (column headings)."""
    return chr(ord("A") + i % 26) + (str(i // 26 + 1) if i >= 26 else "")


def flatten_snapshot(exp: dict) -> dict[str, str]:
    """A run's snapshot (its experiment table, engine.runs.snapshot_experiment) as {key: value}:
    nested tables dotted (dataset.name), each generation's keys under its label ("BAN-1 optimizer.lr")."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(value).lower() if isinstance(value, bool) else str(value)

    for key, value in exp.items():
        if key == "generation" and isinstance(value, list):
            for g, table in enumerate(value):
                for k, v in (table.items() if isinstance(table, dict) else ()):
                    walk(f"{gen_label(g)} {k}", v)
        else:
            walk(key, value)
    return out


def config_diff(configs: list[dict[str, str] | None]) -> list[dict]:
    """The keys whose values differ between the runs' flattened snapshots (None: no snapshot,
    left out), first-seen order: [{"key": k, "r0": value or "-", "r1": ...}]."""
    known = [c for c in configs if c is not None]
    keys = list(dict.fromkeys(k for c in known for k in c))
    rows = []
    for key in keys:
        values = [c.get(key, "-") for c in known]
        if len(set(values)) > 1:
            rows.append({"key": key, **{f"r{i}": "-" if c is None else c.get(key, "-")
                                        for i, c in enumerate(configs)}})
    return rows


def delta_rows(states: list[RunState]) -> list[dict]:
    """Each generation's last-epoch test value and each ensemble's, for every run, and each later
    run's difference against the first run (points of error, or perplexity): one row per
    generation or ensemble any run has ({"column": "BAN-1", "r0": "8.64%", "r1": "9.10% +0.46"})."""
    def values(state: RunState) -> dict[str, float]:
        found = {gen_label(gen): g.test for gen, g in sorted(state.gens.items()) if g.test is not None}
        for k, e in sorted(state.ensembles.items()):
            if ensemble_value(e, state.metric) is not None:
                found[f"Ens*{k}"] = ensemble_value(e, state.metric)
        return found

    table = [values(s) for s in states]
    metric = states[0].metric if states else "err"
    seen = list(dict.fromkeys(x for t in table for x in t))
    labels = sorted(seen, key=lambda x: (x.startswith("Ens*"), seen.index(x)))
    factor = 1 if metric == "ppl" else 100
    rows = []
    for label in labels:
        ref = table[0].get(label)
        row = {"column": label}
        for i, t in enumerate(table):
            v = t.get(label)
            delta = f" {(v - ref) * factor:+.2f}" if i and v is not None and ref is not None else ""
            row[f"r{i}"] = metric_str(v, metric) + delta
        rows.append(row)
    return rows


DIAGNOSTIC_KEYS = ("grad_correct", "grad_dark", "conf_w_mean", "conf_w_std")
DIAGNOSTIC_COLUMNS = [("generation", "")] + [(k, k) for k in DIAGNOSTIC_KEYS]


def diagnostics_rows(state: RunState) -> list[dict]:
    """The gradient decomposition (eq. 7) and teacher-confidence weights (eq. 10) of each
    generation's last epoch; '-' where an objective has no teacher."""
    rows = []
    for gen in sorted(state.gens):
        d = state.gens[gen].last.get("diagnostics") or {}
        if d:
            rows.append({"generation": gen_label(gen), **{k: num(d.get(k)) for k in DIAGNOSTIC_KEYS}})
    return rows


def current_gen(state: RunState):
    """The generation being trained (the last one started), or None before any."""
    return state.gens[max(state.gens)] if state.gens else None


RUN_COLUMNS = [("run", "run"), ("status", "status"), ("progress", "epochs"),
               ("generation", "generation"), ("last", "last test"), ("started", "started")]


def status_label(status: str, state: RunState) -> str:
    """The status as shown: a queued run with its position ("queued #2")."""
    return f"queued #{state.queued}" if status == "queued" and state.queued else status


def run_row(run_dir: Path, state: RunState, now: float | None = None) -> dict:
    """A line of `ban ls`: status, epochs done/planned, current generation and its latest
    (last-epoch) test error or perplexity."""
    done, planned = state.progress
    g = current_gen(state)
    run_dir = Path(run_dir)
    return {"run": f"{state.experiment or run_dir.parent.name}/{state.run_id or run_dir.name}",
            "status": status_label(state.status(now), state), "progress": f"{done}/{planned}",
            "generation": f"{g.label} {g.epoch}/{g.epochs}" if g else "-",
            "last": metric_str(g.test, g.metric) if g else "-", "started": clock(state.started, "%m-%d %H:%M")}


def ellipsize(text: str, width: int) -> str:
    """At most `width` characters: cut at the end with an ellipsis (a cell never wraps)."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def short_run_name(name: str, width: int) -> str:
    """experiment/run-id in at most `width` characters: the experiment is cut first (with an
    ellipsis), so the run id, which tells runs apart, stays whole while it fits."""
    exp, _, rid = name.rpartition("/")
    if len(name) <= width or not exp or len(rid) + 2 >= width:
        return ellipsize(name, width)
    return f"{ellipsize(exp, width - len(rid) - 1)}/{rid}"


def chain_objectives(objectives: list[str]) -> str:
    """The objectives of a chain's generations, repeats folded: ce→ban (teacher ce, students ban)."""
    out: list[str] = []
    for o in objectives:
        if o and (not out or out[-1] != o):
            out.append(o)
    return "→".join(out) or "-"


# ---- remote hosts ---------------------------------------------------------------------------

HOST_COLUMNS = [("host", "host"), ("ssh", "ssh"), ("state", "status"), ("gpu", "GPU"), ("util", "util"),
                ("memory", "memory"), ("runs", "running")]


def host_rows(host: "Host", status: "HostStatus") -> list[dict]:
    """The lines of a host in `ban hosts` and the TUI's hosts tab: one per GPU (at least one)."""
    first = {"host": host.name, "ssh": host.ssh, "state": status.summary,
             "runs": ", ".join(r.name for r in status.runs) or "-"}
    rows = []
    for g in status.gpus or [None]:
        row = dict(first) if not rows else {}
        if g is not None:
            row["gpu"] = f"{g.index} {g.name}"
            row["util"] = "-" if g.util is None else f"{g.util:.0f}%"
            row["memory"] = ("-" if g.mem_used is None or g.mem_total is None
                             else f"{g.mem_used / 1024:.1f}/{g.mem_total / 1024:.1f} GiB")
        rows.append(row)
    return rows


# ---- events as lines ------------------------------------------------------------------------

def event_line(name: str, e: dict) -> str | None:
    """One plain line per event worth a line (None for heartbeats); `name` is exp/run-id."""
    kind = e.get("kind")
    gen = e.get("gen")
    who = f"{name} {gen_label(gen)}" if gen is not None else name
    if kind == "run_start":
        verb = "resumed" if e.get("resumed") else "started"
        return f"{name} {verb} seed {e.get('seed')} on {e.get('host') or '-'} device {e.get('device') or '-'} pid {e.get('pid')}"
    if kind == "gen_start":
        teacher = e.get("teacher")
        taught = f" teacher {gen_label(teacher)}" if teacher is not None else ""
        return (f"{who} start {e.get('objective')} {e.get('model')} {params_str(e.get('params'))} params "
                f"{e.get('epochs')} epochs{taught}")
    if kind == "epoch":
        key = "test_ppl" if "test_ppl" in e else "test_err"
        test = metric_str(e.get(key), "ppl" if key == "test_ppl" else "err")
        return (f"{who} epoch {e.get('epoch')}/{e.get('epochs')} train_loss {num(e.get('train_loss'))} "
                f"{key} {test} lr {num(e.get('lr'))} {duration(e.get('seconds'))}")
    if kind == "gen_end":
        final, best = e.get("final") or {}, e.get("val_min") or {}
        key = "test_ppl" if "test_ppl" in final else "test_err"
        metric = "ppl" if key == "test_ppl" else "err"
        vkey = key.replace("test", "val")
        val = f" min {vkey} {metric_str(best[vkey], metric)}" if best.get(vkey) is not None else ""
        return f"{who} done {key} {metric_str(final.get(key), metric)}{val}"
    if kind == "ensemble":
        key = "test_ppl" if "test_ppl" in e else "test_err"
        return f"{name} Ens*{e.get('k')} {key} {metric_str(e.get(key), 'ppl' if key == 'test_ppl' else 'err')}"
    if kind == "log":
        return f"{who} {e.get('level', 'info')}: {e.get('message', '')}"
    if kind == "error":
        return f"{who} error: {e.get('message', '')}"
    if kind == "run_end":
        err = e.get("error")
        return f"{name} ended {e.get('status')}" + (f": {err}" if err else "")
    return None


# ---- plain text -----------------------------------------------------------------------------

def render_plain(columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """Rows as left-aligned columns separated by two spaces (for pipes and files)."""
    heads = [h for _, h in columns]
    cells = [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(heads, *cells)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [heads] + cells]
    return "\n".join(lines)
