"""What `ban show`, `ban report` and `ban models` print: a run's tables, a collected report in a
human format, the model registry's rows. Never imports torch or textual (`model_rows` imports the
registry only for a size outside the committed table)."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from engine import scheduler
from engine.runs import RunPaths, death_reason, load_state
from ban_tui import notes as notes_mod, report as report_mod
from ban_tui.live import metric_header, print_table, say
from ban_tui.tables import (DIAGNOSTIC_COLUMNS, ENSEMBLE_COLUMNS, GEN_COLUMNS, clock, diagnostics_rows,
                            ensemble_rows, gen_rows, metric_str, params_str, with_val_selected)


def print_run(console: Console, root: Path) -> None:
    """A run's generations, ensembles and gradient diagnostics (and its stderr when it failed)."""
    scheduler.ensure_scheduler(root.parent.parent)
    state = load_state(root)
    status = state.status()
    say(console, f"{state.experiment}/{state.run_id}  status {status}  seed {state.seed}  "
                 f"device {state.device or '-'}  host {state.host or '-'}  started {clock(state.started)}")
    say(console, f"directory {root}")
    try:
        notes = notes_mod.read(root)
        if notes.tags:
            say(console, f"tags {', '.join(notes.tags)}")
        for n in notes.notes:
            say(console, f"note {clock(n.get('ts'))}  {n['text']}")
    except notes_mod.NotesError as exc:
        say(console, f"notes: {exc}")
    rows = gen_rows(state)
    print_table(console, metric_header(with_val_selected(GEN_COLUMNS, rows), state.metric), rows, "generations")
    key = f"train_eval_{state.metric}"   # gen_end's fit criterion
    fit = [f"{g.label} {metric_str(g.final[key], state.metric)}" for _, g in sorted(state.gens.items()) if key in g.final]
    if fit:
        say(console, "training set in eval mode (fit): " + "  ".join(fit))
    if state.ensembles:
        print_table(console, metric_header(ENSEMBLE_COLUMNS, state.metric), ensemble_rows(state), "ensembles")
    diag = diagnostics_rows(state)
    if diag:
        print_table(console, DIAGNOSTIC_COLUMNS, diag, "diagnostics (last epoch of each generation)")
    for message in state.errors:
        say(console, f"error: {message}")
    if status == "broken":
        say(console, f"broken: {state.broken_reason}")
    if status in ("failed", "dead", "stale", "broken"):
        if state.end and state.end.get("error"):
            say(console, f"run_end: {state.end['error']}")
        elif why := death_reason(root):
            say(console, why)
        tail = stderr_tail(root)
        if tail:
            say(console, "stderr (last lines):")
            say(console, tail)


def stderr_tail(root: Path, lines: int = 20) -> str:
    try:
        text = RunPaths(root).stderr.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def print_report(console: Console, rep: dict, fmt: str = "table") -> None:
    """A collected report in a human format, then its warnings and left-out runs."""
    if fmt == "md":
        say(console, report_mod.to_markdown(rep))
        return
    if fmt == "csv":
        say(console, report_mod.to_csv(rep))
        for line in report_mod.notes(rep):
            print(line, file=sys.stderr)
        return
    print_table(console, *report_mod.table(rep))
    for line in report_mod.notes(rep):
        say(console, line)


def model_rows(names, classes, in_channels: int) -> tuple[list[dict], list[str]]:
    """The registry's rows (name, family, classes, params, paper, its deviation from the paper's
    count, about) and notes on the names whose size could not be had or that deviate (and why)."""
    from engine import catalog, param_counts
    paper, paper_classes = param_counts.PAPER_PARAMS, param_counts.PAPER_NUM_CLASSES
    rows, notes = [], []
    for name in names or param_counts.listed():
        try:
            family = catalog.resolve_model(name)[0]
        except KeyError:
            family = None
        n_classes = classes or param_counts.default_classes(name)
        count = param_counts.cached(name, n_classes, in_channels)   # the listing's sizes: no torch
        try:
            if count is None:
                from engine import models as registry  # torch: only a size outside the table needs it
                count = registry.param_count(name, n_classes, in_channels)
            ours = params_str(count)
        except Exception as exc:  # a name the registry cannot build alone: say why below, keep listing
            ours = "n/a"
            notes.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        p = paper.get(name)
        at = paper_classes.get(name, n_classes)
        dev = param_counts.deviation(name) if at == n_classes and in_channels == 3 else None
        if param_counts.deviation_note(name) and dev is not None:
            notes.append(param_counts.deviation_note(name))
        rows.append({"name": name, "family": family.family if family else "-", "classes": n_classes,
                     "params": ours, "paper": "-" if p is None else f"{p:.2f}M" + (f" ({at} classes)" if at != n_classes else ""),
                     "dev": "-" if dev is None else f"{100 * dev:+.1f}%", "about": family.doc if family else ""})
    return rows, notes


def print_models(console: Console, names, classes, in_channels: int) -> None:
    """`ban models`: the registry's table and its notes, then (listing everything) the forms of
    a model of one's own (engine/catalog.py REFERENCE_FORMS)."""
    from engine import catalog
    rows, notes = model_rows(names, classes, in_channels)
    print_table(console, [("name", "name"), ("family", "family"), ("classes", "classes"), ("params", "params"),
                          ("paper", "paper"), ("dev", "vs paper"), ("about", "")], rows)
    for note in notes:
        say(console, note)
    if not names:
        say(console, "\nmodels by reference (model = \"...\" in experiments.toml):")
        for form, doc in catalog.REFERENCE_FORMS:
            say(console, f"  {form:<20}  {doc}")
