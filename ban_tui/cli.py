"""`ban`: the headless experiment manager (run, follow, list, show, report, resume, cancel, rm).

Every command is a plain function whose docstring is its help, written once over a backend
(ban_tui.backends: this machine, a box over ssh, a Slurm cluster; `--host NAME` picks one).
Nothing here imports torch: `ban models` reads the committed counts of engine.param_counts, and
imports the model registry inside the command only for a size outside that table.
Exit status: 0 ok, 1 a run failed (or a run could not be cancelled/resumed), 2 bad input
(config problems, unknown names), 130 cancelled.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from engine import spec
from engine.runs import default_runs_dir, find_run, list_runs
from engine.spec.checks import did_you_mean
from ban_tui import engine_check, hosts as hosts_mod, notes as notes_mod, report as report_mod
from ban_tui.backends import backend_for
from ban_tui.backends.base import FAILURES
from ban_tui.choose import MAX_CELLS, chain_summary, pick_experiments, print_chain, print_grids, refuse_big_sweeps
from ban_tui.follow import follow as follow_sources
from ban_tui.interrupts import EXIT_CANCELLED, cancel_and_explain, cancel_on_signals, signals_held
from ban_tui.progress import chain_progress
from ban_tui.live import OutputConsole, open_view, print_summary, print_table, say
from ban_tui.tables import HOST_COLUMNS, RUN_COLUMNS, clock, host_rows, run_row, status_label
from ban_tui.views import print_models, print_report, print_run

app = typer.Typer(help="Born-Again Networks: run, follow and report experiment chains.",
                  no_args_is_help=True, add_completion=False)

EXIT_FAILED, EXIT_USAGE = 1, 2
HOST_HELP = "Act on this host over ssh: a \\[hosts.NAME] table (from the config or ~/.config/ban/hosts.toml)."
CONFIG_HELP = "Config file whose \\[hosts] to use (default: ./experiments.toml when there is one)."



def out() -> Console:
    return OutputConsole(highlight=False)


def fail(message: str, code: int = EXIT_USAGE):
    """One line on stderr, then exit."""
    print(f"ban: {message}", file=sys.stderr)
    raise typer.Exit(code)


def load_config(file: Path, models: bool = False) -> spec.Config:
    """The config, or every problem on stderr and exit 2. An experiment's `host` may name a
    host of the user's hosts file as well as one of the file's [hosts]. `models`: also build
    reference models and read the user's data sets (ban_tui/engine_check.py, a torch process)."""
    try:
        config = spec.load(file, extra_hosts=hosts_mod.load_user_hosts())
        problems = engine_check.torch_problems(file, config) if models else []
    except spec.SpecError as exc:
        problems = [str(p) for p in exc.problems]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        n = len(problems)
        fail(f"{file}: {n} problem{'s' * (n != 1)}; nothing launched")
    return config


def find(runs_dir: Path, ref: str) -> Path:
    try:
        return find_run(runs_dir, ref)
    except LookupError as exc:
        fail(str(exc))


def find_many(runs_dir: Path, refs: list[str]) -> list[Path]:
    """Runs by reference, in the order given, each once; an experiment name means all its runs."""
    roots = []
    for ref in refs:
        roots += [d for d in list_runs(runs_dir) if d.parent.name == ref] or [find(runs_dir, ref)]
    return list(dict.fromkeys(roots))


def exit_code(sources) -> int:
    statuses = [s.status() for s in sources]
    if any(st in ("failed", "dead", "stale", "broken") for st in statuses):
        return EXIT_FAILED
    return EXIT_CANCELLED if "cancelled" in statuses else 0


def watch(console: Console, sources, on_interrupt) -> int:
    """Follow sources in the live view, then print their tables; the exit status of the runs.
    On Ctrl-C call on_interrupt() (it returns the exit status to use)."""
    try:
        with open_view(console) as view:
            follow_sources(sources, view)
    except KeyboardInterrupt:
        return on_interrupt()
    print_summary(console, sources)
    return exit_code(sources)


# ---- commands -------------------------------------------------------------------------------

@app.command()
def validate(file: Path = typer.Argument(..., help="experiments.toml")):
    """Check a config file: one line per experiment, or every problem (exit 2)."""
    config = load_config(file, models=True)
    console = out()
    for exp in config.experiments.values():
        say(console, chain_summary(exp))
    print_grids(console, config)


@app.command()
def run(file: Path = typer.Argument(..., help="experiments.toml"),
        only: Optional[List[str]] = typer.Option(None, "--only", help="Experiment, sweep, or a glob over the expanded names (repeatable)."),
        every: bool = typer.Option(False, "--all", help="Run every experiment of the file."),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (overrides the config)."),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where runs go (default: the config's runs_dir)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid and the resolved chains; launch nothing."),
        detach: bool = typer.Option(False, "--detach", help="Return at once; follow later with `ban follow`."),
        host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP + " (default: the experiment's host)"),
        hosts: Optional[str] = typer.Option(None, "--hosts", help="Spread the chains over these hosts' free slots "
                                            "(comma-separated; `local` is this machine)."),
        yes: bool = typer.Option(False, "--yes", help=f"Run a sweep of more than {MAX_CELLS:,} cells.")):
    """Validate FILE, queue one chain per (experiment, seed) on the slots of its host (this
    machine by default) and follow them live. A chain starts at once on a free slot, else waits
    in the host's queue (`queued #N`) and starts, oldest first, as slots free.

    Ctrl-C cancels the runs gracefully (they checkpoint; `ban resume` continues them; queued ones
    leave the queue); runs on a host keep going there (`ban follow RUN --host NAME` follows them
    again). Once the local runs have ended, prints their report (as `ban report`). Exit 0 when every run ended ok, 1 if any failed, 130 when cancelled."""
    config = load_config(file)
    if not (host or hosts or any(e.host for e in config.experiments.values())):   # they import where they run
        load_config(file, models=True)
    try:
        exps = pick_experiments(config, only or [], every)
    except LookupError as exc:
        fail(str(exc))
    console = out()
    if dry_run:
        print_grids(console, config, {e.name for e in exps})
        for exp in exps:
            print_chain(console, file, exp, runs_dir or Path(exp.runs_dir), device)
        return
    try:
        refuse_big_sweeps(config, exps, yes)
    except ValueError as exc:
        fail(str(exc))
    launched = []   # (backend, Launch), in the order they started

    def here() -> list:   # the runs of this machine: this command's Ctrl-C cancels them
        return [r.run_dir for b, r in launched if not b.remote]

    def on_interrupt() -> int:   # every engine started so far, whenever the signal came
        say_follow(console, [(b, r) for b, r in launched if b.remote], file, config,
                   "stopped following; on the hosts the runs keep going. Again: ")
        return cancel_and_explain(console, here()) if here() else EXIT_CANCELLED

    cancel_on_signals()   # before the first engine starts: SIGINT/SIGTERM cancel in every setting
    try:
        with signals_held():   # a signal while starting engines cancels every one started
            submit_chains(launched, config, file, exps, device, runs_dir, host, hosts)
        for b, r in launched:
            verb = "submitted" if r.job is not None else "started" if r.pid is not None else "queued"
            how = f"as {r.how}" if r.job is not None else f"({r.how})" if r.pid is not None else f"(#{r.queued})"
            say(console, f"{verb} {r.name} {how} in {r.where}")
        if detach:
            say_follow(console, launched, file, config)
            return
        sources = [watched(console, b, b.source(r.run_dir, r.pid, r.pid_start)) for b, r in launched]
        code = watch(console, sources, on_interrupt)
    except KeyboardInterrupt:
        code = on_interrupt()
    if here() and code != EXIT_CANCELLED:
        rep = report_mod.collect(here())
        if rep["experiments"]:
            say(console, "")
            say(console, "report of these runs (last-epoch test error; paired Δ = student - teacher "
                         "of the same seed, 95 % t interval; `ban report` for every run):")
            print_report(console, rep)
    raise typer.Exit(code)


def say_follow(console: Console, launched, file: Path | None = None, config: spec.Config | None = None,
               prefix: str = "follow with: ") -> None:
    """One `ban follow` command per backend for its runs. It names FILE (--config) when the host
    comes from its [hosts] and FILE is not the experiments.toml that `ban follow` reads anyway."""
    groups = {}
    for b, r in launched:
        groups.setdefault(b.name, (b, []))[1].append(r.run_dir)
    for b, dirs in groups.values():
        named = file if config and b.name in config.hosts and file != Path("experiments.toml") else None
        say(console, prefix + follow_command(b, dirs, named))


def follow_command(b, run_dirs, config_file: Path | None = None) -> str:
    """`ban follow` of these runs on this backend, as a user can paste it."""
    # a run here by its path (it needs no --runs-dir then), one on a host by experiment/run-id
    names = ["/".join(str(d).rstrip("/").split("/")[-2:]) if b.remote else str(d) for d in run_dirs]
    return shlex.join(["ban", "follow", *names, *b.follow_args(config_file)])


def target(name: str, config: spec.Config, runs_dir):
    """A backend by host name; `local` is this machine, with or without a [hosts.local] table."""
    if name == "local" and "local" not in hosts_mod.all_hosts(config):
        return backend_for(None, runs_dir)
    return backend_for(host_named(name, config=config), runs_dir)


def submit_chains(launched: list, config: spec.Config, file: Path, exps, device, runs_dir, host, hosts) -> None:
    """Queue every (experiment, seed) on its backend, appending (backend, Launch) to `launched` as
    it goes: --hosts spreads them over the hosts' free slots (the least loaded first: busy, queued
    and just placed chains per slot), --host or the experiment's host takes them all, else this
    machine. A backend that takes its chains at once (Slurm: one job array) gets them at the end."""
    known = {}

    def backend_named(name: str | None):
        if name not in known:
            known[name] = (target(name, config, runs_dir) if name
                           else backend_for(hosts_mod.all_hosts(config).get("local"), runs_dir))
        return known[name]

    spread = [backend_named(n.strip()) for n in hosts.split(",") if n.strip()] if hosts else []
    loads = {}
    for b in spread:
        try:
            loads[b.name] = b.load(exps)
        except FAILURES as exc:
            fail(f"cannot reach {b.name}: {exc}", EXIT_FAILED)
    batches = {}
    for exp in exps:
        for seed in exp.seeds:
            if spread:
                b = min(spread, key=lambda b: (loads[b.name]["busy"] + loads[b.name]["queued"] + 1)
                        / max(1, loads[b.name]["slots"]))
                loads[b.name]["queued"] += exp.gpus
            else:
                b = backend_named(host or exp.host)
            if b.batched:
                batches.setdefault(b.name, (b, []))[1].append((exp, seed))
                continue
            try:
                launched.extend((b, r) for r in b.submit([(exp, seed)], file, device))
            except FAILURES as exc:
                fail(f"cannot start {exp.name} seed {seed}: {exc}", EXIT_FAILED)
    for b, chains in batches.values():
        try:
            launched.extend((b, r) for r in b.submit(chains, file, device))
        except FAILURES as exc:
            fail(f"cannot submit to {b.name}: {exc}", EXIT_FAILED)


@app.command("ls")
def ls(runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Runs directory (default: $BAN_RUNS_DIR, else experiments.toml's runs_dir, else ./runs)."),
       every: bool = typer.Option(False, "--all", help="Show every run, not only the 20 latest."),
       host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
       config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """List runs with their status, progress, latest (last-epoch) test error and start time."""
    b = backend(host, config_file, runs_dir)
    try:
        runs = b.runs()   # queued runs there: the backend makes sure they will start
    except FAILURES as exc:
        fail(str(exc), EXIT_FAILED)
    console = out()
    if not runs:
        say(console, f"no runs {b.where}")
        return
    shown = runs if every else runs[-20:]
    now = time.time()
    rows = [{**run_row(Path(r.dir), r.state, now), "status": status_label(r.status, r.state),
             "progress": str(chain_progress(r.state, r.plan)), **r.extra} for r in shown]
    print_table(console, RUN_COLUMNS + b.columns, rows)
    for r in shown:
        if r.status == "broken":
            say(console, f"{Path(r.dir).parent.name}/{Path(r.dir).name}: broken: {r.state.broken_reason}")
    if len(shown) < len(runs):
        say(console, f"({len(runs) - len(shown)} older runs not shown; --all shows them)")


@app.command()
def show(run_ref: str = typer.Argument(..., metavar="RUN", help="Run directory, experiment/run-id, run id or its prefix."),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """A run's generations, ensembles and gradient diagnostics (and its stderr when it failed)."""
    root = find(default_runs_dir(runs_dir), run_ref)
    print_run(out(), root)


@app.command()
def follow(run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Runs to follow."),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
           config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Follow runs live until they end (a finished run: print its history and exit).

    Ctrl-C stops following; the runs keep going."""
    b = backend(host, config_file, runs_dir)
    dirs = [find_on(b, ref) for ref in run_refs]
    console = out()

    def detach_msg() -> int:
        say(console, "stopped following; the runs keep going. Again: " + follow_command(b, dirs, config_file))
        return EXIT_CANCELLED

    raise typer.Exit(watch(console, [watched(console, b, b.source(d)) for d in dirs], detach_msg))


@app.command()
def resume(run_ref: str = typer.Argument(..., metavar="RUN"),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           detach: bool = typer.Option(False, "--detach", help="Return at once."),
           host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
           config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Continue a cancelled or interrupted run from its last checkpoint, and follow it.

    With --host: on that host (a new job on a Slurm host). Ctrl-C cancels a run resumed on this
    machine (it checkpoints again); on a host it stops following."""
    b = backend(host, config_file, runs_dir)
    if not b.remote:
        cancel_on_signals()
    try:
        r = b.resume(find_on(b, run_ref))
    except FAILURES as exc:
        fail(str(exc), EXIT_FAILED)
    console = out()
    say(console, f"resumed {r.name} {'as ' + r.how if r.job else f'(pid {r.pid})'} in {r.where}")
    if detach:
        say(console, "follow with: " + follow_command(b, [r.run_dir], config_file))
        return

    def on_interrupt() -> int:
        if not b.remote:
            return cancel_and_explain(console, [r.run_dir])
        say(console, "stopped following; the run keeps going. Again: " + follow_command(b, [r.run_dir], config_file))
        return EXIT_CANCELLED

    raise typer.Exit(watch(console, [watched(console, b, b.source(r.run_dir, r.pid, r.pid_start))], on_interrupt))


@app.command()
def cancel(run_refs: List[str] = typer.Argument(..., metavar="RUN..."),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           wait: bool = typer.Option(True, help="Wait until the engines have checkpointed and stopped."),
           timeout: float = typer.Option(120.0, help="Seconds to wait."),
           host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
           config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Stop runs gracefully: SIGTERM, the engine checkpoints and ends the run as cancelled.

    With --host: on that host (scancel for a run in a Slurm job)."""
    b = backend(host, config_file, runs_dir)
    raise typer.Exit(each(run_refs, lambda ref: b.cancel(ref, wait, timeout)))


@app.command()
def rm(run_refs: List[str] = typer.Argument(..., metavar="RUN..."),
       runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
       host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
       config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Remove finished, failed or cancelled runs (their directories); refuse a running one.

    A queued run leaves the queue (a pending Slurm job is cancelled). Exit 1 if any was refused."""
    b = backend(host, config_file, runs_dir)
    raise typer.Exit(each(run_refs, b.rm))


def each(refs: list[str], verb) -> int:
    """verb(ref) for each run in turn, saying what it did; 1 if any was refused (2: no such run)."""
    console = out()
    code = 0
    for ref in refs:
        try:
            say(console, verb(ref))
        except FAILURES as exc:
            print(f"ban: {exc}", file=sys.stderr)
            code = max(code, EXIT_USAGE if isinstance(exc, LookupError) else EXIT_FAILED)
    return code


@app.command("report")
def report_cmd(refs: Optional[List[str]] = typer.Argument(None, metavar="[RUNS...]",
                                                          help="Runs or experiment names (default: every run)."),
               runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
               fmt: str = typer.Option("table", "--format", help="table, md, csv or json."),
               bootstrap: int = typer.Option(2000, "--bootstrap", min=0, help="Bootstrap replicates (0: none)."),
               boot_seed: int = typer.Option(0, "--bootstrap-seed", help="The bootstrap's random seed."),
               effect: Optional[float] = typer.Option(None, "--effect", help="Print the seeds each difference "
                                                      "needs to resolve this many points (80 % power).")):
    """Paper-style results: per (experiment, configuration), Teacher, BAN-k and Ens*k as mean ± std
    over seeds (the latest ok run of each seed), with the paired per-seed difference against the
    teacher (and the independent-CE control) with its 95 % Student-t interval over seeds, its 95 %
    paired bootstrap interval over seeds × test examples, Holm-adjusted p, the minimum detectable
    effect and a verdict (docs/statistics.md). Runs left out and names that cover several
    configurations are listed under the table (on stderr for csv)."""
    formats = ("table", "md", "csv", "json")
    if fmt not in formats:
        fail(f"--format: expected one of {', '.join(formats)}, found {fmt!r}{did_you_mean(fmt, formats)}")
    if effect is not None and not effect > 0:
        fail(f"--effect: expected a positive number of points, found {effect}")
    runs_dir = default_runs_dir(runs_dir)
    roots = find_many(runs_dir, refs) if refs else list_runs(runs_dir)
    rep = report_mod.collect(dict.fromkeys(roots), bootstrap=bootstrap, boot_seed=boot_seed)
    console = out()
    if effect is not None and rep["experiments"]:
        for line in report_mod.power_lines(rep, effect):
            say(console, line)
        return
    if fmt == "json":
        say(console, json.dumps(rep, indent=2))
    elif not rep["experiments"]:
        fail(f"no run that ended ok among {len(roots)} under {runs_dir}", EXIT_FAILED)
    else:
        print_report(console, rep, fmt)


@app.command()
def note(run_ref: str = typer.Argument(..., metavar="RUN"),
         text: Optional[str] = typer.Argument(None, help="The note (omit to list the run's notes)."),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """Add a note to a run (kept in its notes.json, never in events.jsonl), or list its notes."""
    root = find(default_runs_dir(runs_dir), run_ref)
    try:
        notes = notes_mod.add_note(root, text) if text is not None else notes_mod.read(root)
    except notes_mod.NotesError as exc:
        fail(str(exc))
    console = out()
    for n in notes.notes:
        say(console, f"{clock(n.get('ts'))}  {n['text']}")
    if not notes.notes:
        say(console, f"no notes on {root.parent.name}/{root.name}")


@app.command(context_settings={"ignore_unknown_options": True})
def tag(run_ref: str = typer.Argument(..., metavar="RUN"),
        changes: Optional[List[str]] = typer.Argument(None, metavar="[+NAME|-NAME...]",
                                                     help="+name (or name) adds a tag, -name removes it; none: list."),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """Add or remove a run's tags (shown by `ban ls`), or list them."""
    root = find(default_runs_dir(runs_dir), run_ref)
    try:
        notes = notes_mod.change_tags(root, changes) if changes else notes_mod.read(root)
    except notes_mod.NotesError as exc:
        fail(str(exc))
    say(out(), f"{root.parent.name}/{root.name}: tags {', '.join(notes.tags) or '(none)'}")


@app.command()
def models(names: Optional[List[str]] = typer.Argument(None, metavar="[NAMES...]",
                                                      help="Only these models (any registry name)."),
           classes: Optional[int] = typer.Option(None, help="Classes of the head (default: the paper's "
                                                             "for models it reports, else 10)."),
           in_channels: int = typer.Option(3, "--in-channels")):
    """The model registry with parameter counts, beside the paper's where it gives one."""
    print_models(out(), names, classes, in_channels)


@app.command()
def plot(run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Runs or experiment names (overlaid)."),
         output: Path = typer.Option(..., "-o", "--output", help="FILE.png, FILE.svg or FILE.pdf."),
         panels: Optional[List[str]] = typer.Option(None, "--panel", help="curves, generations, loss or gradients "
                                                                          "(repeatable; default: all four)."),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """A figure of runs for a paper or a slide: test error (%) per epoch over the whole chain with
    the generations marked, the final error per generation with the ensembles, the loss curves and
    the gradient decomposition (eq. 7). Needs matplotlib: pip install 'ban[plot]'."""
    from ban_tui import plot as plot_mod
    roots = find_many(default_runs_dir(runs_dir), run_refs)
    try:
        written = plot_mod.save(roots, output, tuple(panels or plot_mod.PANELS))
    except plot_mod.PlotError as exc:
        fail(str(exc))
    say(out(), f"wrote {written}")


@app.command()
def export(run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Runs or experiment names."),
           tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="Write TensorBoard logs under DIR "
                                                                                  "(DIR/experiment/run-id/generation)."),
           mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="STORE",
                                                help="Write MLflow runs (one per chain, one nested per generation) "
                                                     "to a tracking URI or a sqlite file/directory."),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """Export runs' stored events to other tools: --tensorboard DIR (then: tensorboard --logdir DIR)
    and/or --mlflow STORE (sqlite:///mlflow.db, http://host:5000, or a path: a sqlite database there).
    Needs tensorboard (pip install 'ban[export]') or mlflow (pip install 'ban[mlflow]')."""
    from ban_tui import export as export_mod
    if tensorboard is None and mlflow is None:
        fail("say where to export: --tensorboard DIR and/or --mlflow STORE")
    roots = find_many(default_runs_dir(runs_dir), run_refs)
    console = out()
    try:
        if tensorboard is not None:
            for d in export_mod.tensorboard(roots, tensorboard):
                say(console, f"wrote {d}")
            say(console, f"view with: tensorboard --logdir {shlex.quote(str(tensorboard))}")
        if mlflow is not None:
            uri, run_ids = export_mod.mlflow(roots, mlflow)
            for root, run_id in zip(roots, run_ids):
                say(console, f"wrote {root} as MLflow run {run_id}")
            say(console, f"view with: mlflow ui --backend-store-uri {shlex.quote(uri)}")
    except export_mod.ExportError as exc:
        fail(str(exc))


# ---- hosts (ban_tui.backends) --------------------------------------------------------------

def host_named(name: str, config_file: Path | None = None, config: spec.Config | None = None) -> spec.Host:
    """A host of the config (FILE, --config or ./experiments.toml) or of the user hosts file."""
    if config is None:
        path = config_file or Path("experiments.toml")
        config = load_config(path) if config_file or path.exists() else None
    try:
        return hosts_mod.get_host(name, config)
    except (LookupError, spec.SpecError) as exc:
        fail(str(exc))


def backend(host: str | None, config_file: Path | None, runs_dir: Path | None = None):
    """What a command acts on: --host NAME's backend, else this machine's runs directory."""
    return backend_for(host_named(host, config_file) if host else None, runs_dir)


def find_on(b, ref: str):
    try:
        return b.find(ref)
    except FAILURES as exc:
        fail(str(exc))


def watched(console: Console, b, source):
    """A backend's source; one on a host says when its connection drops and when it is back."""
    if not b.remote:
        return source

    def tell(s) -> None:
        if not s.connected:
            ago = s.since_last_event()
            say(console, f"{s.name}: lost the connection to {b.name} ({s.error}); retrying"
                         + (f" (last event {ago:.0f} s ago)" if ago is not None else ""))
        elif s.drops:
            say(console, f"{s.name}: reconnected to {b.name}")

    source.on_connection = tell
    return source


@app.command()
def pull(run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Runs on the host (experiment/run-id, run id or its prefix)."),
         host: str = typer.Option(..., "--host", help=HOST_HELP),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where they go (default ./runs or $BAN_RUNS_DIR)."),
         config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Copy runs from a host (rsync, else scp) so that show and report work offline."""
    b = backend(host, config_file)
    target_dir = default_runs_dir(runs_dir)
    console = out()
    for ref in run_refs:
        d = find_on(b, ref)
        try:
            say(console, f"pulled {ref} from {b.name} to {b.pull(d, target_dir)}")
        except FAILURES as exc:
            fail(str(exc), EXIT_FAILED)


@app.command("hosts")
def hosts_cmd(config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """The known hosts, each with its GPUs (nvidia-smi) and the runs running there."""
    from concurrent.futures import ThreadPoolExecutor
    path = config_file or Path("experiments.toml")
    try:
        known = hosts_mod.ssh_hosts(hosts_mod.all_hosts(load_config(path) if config_file or path.exists() else None))
    except spec.SpecError as exc:
        fail(str(exc))
    console = out()
    if not known:
        say(console, f"no hosts: add [hosts.NAME] tables to {path} or {hosts_mod.user_hosts_path()}")
        return
    with ThreadPoolExecutor(max_workers=8) as pool:   # one slow box does not hold up the others
        statuses = list(pool.map(lambda h: backend_for(h).status(), known.values()))
    rows = [row for h, st in zip(known.values(), statuses) for row in host_rows(h, st)]
    print_table(console, HOST_COLUMNS, rows)


def main():
    app()


if __name__ == "__main__":
    main()
