"""`ban`: the headless experiment manager (run, follow, list, show, report, resume, cancel, rm).

Every command is a plain function whose docstring is its help. Nothing here imports torch:
`ban models` reads the committed counts of engine.param_counts, and imports the model registry
inside the command only for a size outside that table.
Exit status: 0 ok, 1 a run failed (or a run could not be cancelled/resumed), 2 bad input
(config problems, unknown names), 130 cancelled.
"""
from __future__ import annotations

import fnmatch
import json
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from engine import scheduler, spec
from engine.runs import RunPaths, death_reason, default_runs_dir, find_run, gen_label, list_runs, load_state
from engine.spec.checks import did_you_mean
from engine.catalog import CONTROL_SUFFIX
from ban_tui import engine_check, hosts as hosts_mod, launch, notes as notes_mod, report as report_mod, slurm
from ban_tui.remote import control as remote_control
from ban_tui.remote import operations as remote
from ban_tui.remote import queue as remote_queue
from ban_tui.remote.gpus import gpu_status
from ban_tui.remote.source import RemoteSource
from ban_tui.remote.transport import RemoteError
from ban_tui.follow import LocalSource, follow as follow_sources
from ban_tui.progress import chain_progress, hms, load_plan
from ban_tui.live import OutputConsole, metric_header, open_view, print_summary, print_table, say
from ban_tui.tables import (DIAGNOSTIC_COLUMNS, ENSEMBLE_COLUMNS, GEN_COLUMNS, HOST_COLUMNS, RUN_COLUMNS,
                            clock, diagnostics_rows, ensemble_rows, gen_rows, host_rows, params_str, run_row,
                            metric_str, status_label, with_val_selected)

app = typer.Typer(help="Born-Again Networks: run, follow and report experiment chains.",
                  no_args_is_help=True, add_completion=False)

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130
MAX_CELLS = 1000   # a bigger sweep runs only with --yes
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
                fail(f"{config.path}: no experiment {pattern!r}{did_you_mean(pattern, list(exps) + list(config.sweeps))}; "
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
            fail(f"{config.path}: sweep {parent} has {n:,} cells to run (more than {MAX_CELLS:,}); "
                 "run them with --yes, or pick some with --only GLOB")


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


def chain_summary(exp: spec.Experiment) -> str:
    """One line: data set, generations with objectives, model, epochs, ensembles, seeds."""
    objectives = " -> ".join(g.objective for g in exp.generations)
    models = sorted({g.model for g in exp.generations})
    epochs = sorted({g.training.epochs for g in exp.generations})
    ens = ", ".join(f"Ens*{k}" for k in exp.ensembles) or "none"
    return (f"{exp.name}: {exp.dataset.name}, {len(exp.generations)} generations ({objectives}), "
            f"model {', '.join(models)}, epochs {', '.join(map(str, epochs))}, ensembles {ens}, "
            f"seeds {exp.seeds}")


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


SIGNALS = (signal.SIGINT, signal.SIGTERM)


def cancel_on_signals() -> None:
    """From here on SIGINT and SIGTERM raise KeyboardInterrupt, whatever this process inherited:
    a script's background job starts with SIGINT ignored, and Python then never turns it into
    KeyboardInterrupt. Engines started later inherit the default disposition, not the ignore."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    for sig in SIGNALS:
        signal.signal(sig, interrupt)


@contextmanager
def signals_held():
    """SIGINT/SIGTERM are noted and raised as KeyboardInterrupt once the block ends, so that a
    Ctrl-C never falls between starting (or signalling) an engine and noting it. (Not a blocked
    signal mask: engines started meanwhile would inherit it and never see their SIGTERM.)"""
    caught = []
    before = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def wait_stopped(runs, timeout: float) -> bool:
    """Wait until none of the runs has a live engine; True if they all stopped in time."""
    deadline = time.time() + timeout
    while any(launch.running_pid(r) for r in runs):
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def sigterm_all(run_dirs) -> None:
    with signals_held():
        for d in run_dirs:
            try:
                launch.cancel(d)
            except launch.LaunchError:
                pass


def cancel_and_explain(console: Console, run_dirs) -> int:
    """Ctrl-C (or SIGTERM) while watching runs we started: SIGTERM them first (runs still in the
    queue leave it), then say so, wait for their checkpoints and say how to resume. A second
    Ctrl-C stops waiting (the engines still stop on their own); output that fails (say, tee died)
    is dropped and stops nothing."""
    waiting = [d for d in run_dirs if scheduler.dequeue(d)]
    run_dirs = [d for d in run_dirs if d not in waiting]
    try:
        sigterm_all(run_dirs)   # a signal held meanwhile arrives as the block ends: ignored here
    except KeyboardInterrupt:
        pass
    try:
        for d in waiting:
            say(console, f"{d.parent.name}/{d.name}: taken out of the queue (it never started)")
        say(console, "cancelling: the engines finish their step, checkpoint and stop ...")
        wait_stopped(run_dirs, timeout=120)
    except KeyboardInterrupt:
        pass
    with signals_held():
        for d in run_dirs:
            say(console, f"{d.parent.name}/{d.name}: {load_state(d).status()}; resume with: ban resume {d}")
    return EXIT_CANCELLED


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
    exps = pick_experiments(config, only or [], every)
    console = out()
    if dry_run:
        print_grids(console, config, {e.name for e in exps})
        for exp in exps:
            print_chain(console, file, exp, runs_dir or Path(exp.runs_dir), device)
        return
    refuse_big_sweeps(config, exps, yes)
    launched = []

    def on_interrupt() -> int:   # every engine started so far, whenever the signal came
        local = [r.run_dir for r in launched if not isinstance(r, remote.RemoteLaunch)]
        remotes = [r for r in launched if isinstance(r, remote.RemoteLaunch)]
        say_follow_remote(console, remotes, "stopped following; on the hosts the runs keep going. Again: ",
                          follow_config(file, config, remotes))
        return cancel_and_explain(console, local) if local else EXIT_CANCELLED

    cancel_on_signals()   # before the first engine starts: SIGINT/SIGTERM cancel in every setting
    try:
        with signals_held():   # a signal while starting engines cancels every one started
            submit_chains(launched, config, file, exps, device, runs_dir, host, hosts)
        local = [r for r in launched if not isinstance(r, remote.RemoteLaunch)]
        remotes = [r for r in launched if isinstance(r, remote.RemoteLaunch)]
        for r in launched:
            where = f"{r.host}:{r.run_dir}" if isinstance(r, remote.RemoteLaunch) else r.run_dir
            if isinstance(r, slurm.SlurmLaunch):
                say(console, f"submitted {r.name} as Slurm job {r.job} in {where}")
            else:
                say(console, f"started {r.name} (pid {r.pid}) in {where}" if r.pid is not None
                             else f"queued {r.name} (#{r.queued}) in {where}")
        if detach:
            if local:
                say(console, "follow with: " + shlex.join(["ban", "follow"] + [str(r.run_dir) for r in local]))
            say_follow_remote(console, remotes, config_file=follow_config(file, config, remotes))
            return
        sources = ([LocalSource(r.run_dir, r.pid, r.pid_start) for r in local]
                   + [remote_source(console, host_named(r.host, config=config), r.run_dir, r.pid) for r in remotes])
        code = watch(console, sources, on_interrupt)
    except KeyboardInterrupt:
        code = on_interrupt()
    local = [r.run_dir for r in launched if not isinstance(r, remote.RemoteLaunch)]
    if local and code != EXIT_CANCELLED:
        rep = report_mod.collect(local)
        if rep["experiments"]:
            say(console, "")
            say(console, "report of these runs (last-epoch test error; paired Δ = student - teacher "
                         "of the same seed, 95 % t interval; `ban report` for every run):")
            print_report(console, rep)
    raise typer.Exit(code)


def follow_config(file: Path, config: spec.Config, remotes) -> Path | None:
    """The config a printed follow command must name: FILE when a host comes from its [hosts]."""
    return file if any(r.host in config.hosts for r in remotes) and file != Path("experiments.toml") else None


def target_host(name: str, config: spec.Config) -> spec.Host:
    """A host by name; `local` is this machine, with or without a [hosts.local] table."""
    if name == "local" and "local" not in hosts_mod.all_hosts(config):
        return spec.Host(name="local", ssh="")
    return host_named(name, config=config)


def submit_chains(launched: list, config: spec.Config, file: Path, exps, device, runs_dir, host, hosts) -> None:
    """Queue every (experiment, seed) on its host, appending each to `launched` as it goes: --hosts spreads them over the hosts' free
    slots (the least loaded first: busy, queued and just placed chains per slot), --host or the
    experiment's host takes them all, else this machine."""
    spread = [target_host(n.strip(), config) for n in hosts.split(",") if n.strip()] if hosts else []
    loads = {}
    for h in spread:
        try:
            if h.local:
                local_runs = runs_dir or Path(exps[0].runs_dir)
                scheduler.configure(local_runs, h.gpus, h.slots)
                loads[h.name] = scheduler.load(local_runs)
            else:
                remote.check_engine(h)
                loads[h.name] = remote_queue.host_load(h)
        except (OSError, remote.RemoteError) as exc:
            fail(f"cannot reach {h.name}: {exc}", EXIT_FAILED)
    checked, to_slurm = set(loads), {}
    for exp in exps:
        for seed in exp.seeds:
            if spread:
                h = min(spread, key=lambda h: (loads[h.name]["busy"] + loads[h.name]["queued"] + 1)
                        / max(1, loads[h.name]["slots"]))
                loads[h.name]["queued"] += exp.gpus
            else:
                name = host or exp.host
                h = target_host(name, config) if name else hosts_mod.all_hosts(config).get("local")
            if h is not None and h.slurm is not None:   # submitted below, one job array per host
                to_slurm.setdefault(h.name, (h, []))[1].append((exp, seed))
                continue
            try:
                if h is None or h.local:
                    launched.append(launch.launch_local(file, exp, seed, runs_dir or Path(exp.runs_dir), device, host=h))
                else:
                    launched.append(remote_queue.submit(h, exp, seed, device=device, checked=h.name in checked))
                    checked.add(h.name)
            except (OSError, ValueError, RemoteError) as exc:
                fail(f"cannot start {exp.name} seed {seed}: {exc}", EXIT_FAILED)
    for h, chains in to_slurm.values():   # one job array per Slurm host
        try:
            launched += slurm.submit(h, chains, device)
        except (OSError, ValueError, RemoteError) as exc:
            fail(f"cannot submit to {h.name}: {exc}", EXIT_FAILED)


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


@app.command("ls")
def ls(runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Runs directory (default: $BAN_RUNS_DIR, else experiments.toml's runs_dir, else ./runs)."),
       every: bool = typer.Option(False, "--all", help="Show every run, not only the 20 latest."),
       host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
       config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """List runs with their status, progress, latest (last-epoch) test error and start time."""
    if host:
        raise typer.Exit(ls_remote(host_named(host, config_file), every))
    runs_dir = default_runs_dir(runs_dir)
    scheduler.ensure_scheduler(runs_dir)   # queued runs there: make sure they will start
    runs = list_runs(runs_dir)
    console = out()
    if not runs:
        say(console, f"no runs under {runs_dir}")
        return
    shown = runs if every else runs[-20:]
    now = time.time()
    states = {d: load_state(d) for d in shown}
    print_table(console, RUN_COLUMNS + [("eta", "ETA"), ("tags", "tags")], [ls_row(d, now, s) for d, s in states.items()])
    for d, s in states.items():
        if s.status(now) == "broken":
            say(console, f"{d.parent.name}/{d.name}: broken: {s.broken_reason}")
    if len(shown) < len(runs):
        say(console, f"({len(runs) - len(shown)} older runs not shown; --all shows them)")


def ls_row(root: Path, now: float, state) -> dict:
    """run_row with the epochs planned over the whole chain (from the snapshot), its ETA, its tags."""
    p = chain_progress(state, load_plan(root))
    eta = hms(p.eta) if state.status(now) == "running" else "-"
    return {**run_row(root, state, now), "progress": str(p), "eta": eta, "tags": notes_mod.tags_str(root)}


@app.command()
def show(run_ref: str = typer.Argument(..., metavar="RUN", help="Run directory, experiment/run-id, run id or its prefix."),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """A run's generations, ensembles and gradient diagnostics (and its stderr when it failed)."""
    root = find(default_runs_dir(runs_dir), run_ref)
    scheduler.ensure_scheduler(root.parent.parent)
    state = load_state(root)
    console = out()
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


@app.command()
def follow(run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Runs to follow."),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
           config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Follow runs live until they end (a finished run: print its history and exit).

    Ctrl-C stops following; the runs keep going."""
    if host:
        raise typer.Exit(follow_remote(host_named(host, config_file), run_refs))
    roots = [find(default_runs_dir(runs_dir), ref) for ref in run_refs]
    for d in dict.fromkeys(r.parent.parent for r in roots):
        scheduler.ensure_scheduler(d)
    console = out()

    def detach_msg() -> int:
        say(console, "stopped following; the runs keep going. Again: "
                     + shlex.join(["ban", "follow"] + [str(r) for r in roots]))
        return EXIT_CANCELLED

    raise typer.Exit(watch(console, [LocalSource(r) for r in roots], detach_msg))


@app.command()
def resume(run_ref: str = typer.Argument(..., metavar="RUN"),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           detach: bool = typer.Option(False, "--detach", help="Return at once."),
           host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
           config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Continue a cancelled or interrupted run from its last checkpoint, and follow it.

    With --host: on that host (a new job on a Slurm host)."""
    if host:
        raise typer.Exit(resume_remote(host_named(host, config_file), run_ref, detach, config_file))
    root = find(default_runs_dir(runs_dir), run_ref)
    cancel_on_signals()
    try:
        r = launch.resume_local(root)
    except launch.LaunchError as exc:
        fail(str(exc), EXIT_FAILED)
    console = out()
    say(console, f"resumed {r.name} (pid {r.pid}) in {r.run_dir}")
    if detach:
        say(console, "follow with: " + shlex.join(["ban", "follow", str(r.run_dir)]))
        return
    source = LocalSource(r.run_dir, r.pid, r.pid_start)
    raise typer.Exit(watch(console, [source], lambda: cancel_and_explain(console, [r.run_dir])))


@app.command()
def cancel(run_refs: List[str] = typer.Argument(..., metavar="RUN..."),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           wait: bool = typer.Option(True, help="Wait until the engines have checkpointed and stopped."),
           timeout: float = typer.Option(120.0, help="Seconds to wait."),
           host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
           config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Stop runs gracefully: SIGTERM, the engine checkpoints and ends the run as cancelled.

    With --host: on that host (scancel for a run in a Slurm job)."""
    if host:
        raise typer.Exit(on_host(host_named(host, config_file), "cancel", run_refs, wait=wait, timeout=timeout))
    roots = [find(default_runs_dir(runs_dir), ref) for ref in run_refs]
    console = out()
    code = 0
    for root in roots:
        try:
            say(console, launch.cancel(root))
        except launch.LaunchError as exc:
            print(f"ban: {exc}", file=sys.stderr)
            code = EXIT_FAILED
    if wait and not wait_stopped(roots, timeout):
        fail(f"the engines did not stop within {timeout:g} s", EXIT_FAILED)
    if wait:
        for root in roots:
            say(console, f"{root.parent.name}/{root.name}: {load_state(root).status()}")
    raise typer.Exit(code)


@app.command()
def rm(run_refs: List[str] = typer.Argument(..., metavar="RUN..."),
       runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
       host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
       config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Remove finished, failed or cancelled runs (their directories); refuse a running one.

    A queued run leaves the queue (a pending Slurm job is cancelled). Exit 1 if any was refused."""
    if host:
        raise typer.Exit(on_host(host_named(host, config_file), "rm", run_refs))
    console = out()
    code = 0
    for root in [find(default_runs_dir(runs_dir), ref) for ref in run_refs]:
        try:
            say(console, remote_control.rm_here(root))
        except (remote_control.ControlError, RuntimeError, OSError) as exc:
            print(f"ban: {exc}", file=sys.stderr)
            code = EXIT_FAILED
    raise typer.Exit(code)


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
    print_table(out(), [("name", "name"), ("family", "family"), ("classes", "classes"), ("params", "params"),
                        ("paper", "paper"), ("dev", "vs paper"), ("about", "")], rows)
    for note in notes:
        say(out(), note)
    if not names:   # models of your own, by reference (engine/catalog.py REFERENCE_FORMS)
        say(out(), "\nmodels by reference (model = \"...\" in experiments.toml):")
        for form, doc in catalog.REFERENCE_FORMS:
            say(out(), f"  {form:<20}  {doc}")


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


# ---- remote hosts (ban_tui.remote) ----------------------------------------------------------

def host_named(name: str, config_file: Path | None = None, config: spec.Config | None = None) -> spec.Host:
    """A host of the config (FILE, --config or ./experiments.toml) or of the user hosts file."""
    if config is None:
        path = config_file or Path("experiments.toml")
        config = load_config(path) if config_file or path.exists() else None
    try:
        return hosts_mod.get_host(name, config)
    except (LookupError, spec.SpecError) as exc:
        fail(str(exc))


def remote_source(console: Console, host: spec.Host, run_dir: str, pid: int | None = None) -> RemoteSource:
    """A RemoteSource that says when its connection drops and when it is back."""
    source = slurm.follow_source(host, run_dir, pid)

    def tell(s: RemoteSource) -> None:
        if not s.connected:
            ago = s.since_last_event()
            say(console, f"{s.name}: lost the connection to {host.name} ({s.error}); retrying"
                         + (f" (last event {ago:.0f} s ago)" if ago is not None else ""))
        elif s.drops:
            say(console, f"{s.name}: reconnected to {host.name}")

    source.on_connection = tell
    return source


def say_follow_remote(console: Console, runs, prefix: str = "follow with: ", config_file: Path | None = None) -> None:
    via = ["--config", str(config_file)] if config_file else []
    for name in dict.fromkeys(r.host for r in runs):
        say(console, prefix + shlex.join(["ban", "follow"] + [r.name for r in runs if r.host == name] + ["--host", name] + via))


def ls_remote(host: spec.Host, every: bool) -> int:
    console = out()
    try:
        runs = remote.list_remote_runs(host)
    except RemoteError as exc:
        fail(str(exc), EXIT_FAILED)
    if not runs:
        say(console, f"no runs on {host.name} under {remote.remote_runs_dir(host)}")
        return 0
    shown = runs if every else runs[-20:]
    now = time.time()
    # the status comes from the host, where the engine's pid can be checked
    rows = [{**run_row(Path(r.dir), r.state, now), "status": status_label(r.status, r.state),
             "progress": str(chain_progress(r.state))} for r in shown]
    columns = RUN_COLUMNS
    if host.slurm is not None:   # each run's job, as squeue says (pending before its start or a requeue)
        try:
            jobs = slurm.list_jobs(host)
        except RemoteError as exc:
            fail(str(exc), EXIT_FAILED)
        columns = RUN_COLUMNS + [("job", "slurm job")]
        for r, row in zip(shown, rows):
            j = jobs.get(r.name)
            if j:
                row["job"] = f"{j['job']} {j['state'].lower() or 'done'}" + (f" ({j['reason']})" if j["state"] == "PENDING" else "")
                if j["state"] == "PENDING":
                    row["status"] = "pending"
                elif j["state"] == "RUNNING" and r.state.end is not None:   # a new job, before its run_start
                    row["status"] = "starting"
                elif not j["state"] and not r.state.n_events:
                    row["status"] = "never started"
    print_table(console, columns, rows)
    if len(shown) < len(runs):
        say(console, f"({len(runs) - len(shown)} older runs not shown; --all shows them)")
    return 0


def find_remote(host: spec.Host, ref: str) -> str:
    try:
        return remote.find_remote_run(host, ref)
    except RemoteError as exc:
        fail(str(exc))


def follow_remote(host: spec.Host, refs: list[str]) -> int:
    console = out()
    dirs = [find_remote(host, ref) for ref in refs]

    def detach_msg() -> int:
        say(console, "stopped following; the runs keep going. Again: "
                     + shlex.join(["ban", "follow", *refs, "--host", host.name]))
        return EXIT_CANCELLED

    return watch(console, [remote_source(console, host, d) for d in dirs], detach_msg)


def on_host(host: spec.Host, verb: str, refs: list[str], **kw) -> int:
    """cancel / rm on a host, each run in turn; 1 if any was refused."""
    console = out()
    code = 0
    for ref in refs:
        try:
            say(console, remote_control.control(host, verb, ref, **kw)["message"])
        except RemoteError as exc:
            print(f"ban: {exc}", file=sys.stderr)
            code = EXIT_FAILED
    return code


def resume_remote(host: spec.Host, ref: str, detach: bool, config_file: Path | None) -> int:
    console = out()
    try:
        r = remote_control.resume(host, ref)
    except RemoteError as exc:
        fail(str(exc), EXIT_FAILED)
    how = f"as Slurm job {r.job}" if isinstance(r, slurm.SlurmLaunch) else f"(pid {r.pid})"
    say(console, f"resumed {r.name} {how} in {host.name}:{r.run_dir}")
    if detach:
        say_follow_remote(console, [r], config_file=config_file)
        return 0

    def detach_msg() -> int:
        say_follow_remote(console, [r], "stopped following; the run keeps going. Again: ", config_file)
        return EXIT_CANCELLED

    return watch(console, [remote_source(console, host, r.run_dir, r.pid)], detach_msg)


@app.command()
def pull(run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Runs on the host (experiment/run-id, run id or its prefix)."),
         host: str = typer.Option(..., "--host", help=HOST_HELP),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where they go (default ./runs or $BAN_RUNS_DIR)."),
         config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """Copy runs from a host (rsync, else scp) so that show and report work offline."""
    h = host_named(host, config_file)
    target = default_runs_dir(runs_dir)
    console = out()
    for ref in run_refs:
        try:
            say(console, f"pulled {ref} from {h.name} to {remote.pull(h, find_remote(h, ref), target)}")
        except RemoteError as exc:
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
        statuses = list(pool.map(gpu_status, known.values()))
    rows = [row for h, st in zip(known.values(), statuses) for row in host_rows(h, st)]
    print_table(console, HOST_COLUMNS, rows)


def main():
    app()


if __name__ == "__main__":
    main()
