"""`ban`: the headless experiment manager (run, follow, list, show, report, resume, cancel).

Every command is a plain function whose docstring is its help. Nothing here imports torch:
`ban models` imports the model registry inside the command only.
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
from engine.runs import RunPaths, default_runs_dir, find_run, gen_label, list_runs, load_state
from engine.spec.checks import did_you_mean
from engine.catalog import CONTROL_SUFFIX
from ban_tui import hosts as hosts_mod, launch, remote, report as report_mod
from ban_tui.follow import LocalSource, follow as follow_sources
from ban_tui.live import metric_header, open_view, print_summary, print_table, say
from ban_tui.tables import (DIAGNOSTIC_COLUMNS, ENSEMBLE_COLUMNS, GEN_COLUMNS, RUN_COLUMNS, clock,
                            diagnostics_rows, ensemble_rows, gen_rows, params_str, run_row, with_val_selected)

app = typer.Typer(help="Born-Again Networks: run, follow and report experiment chains.",
                  no_args_is_help=True, add_completion=False)

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130
HOST_HELP = "Act on this host over ssh: a \\[hosts.NAME] table (from the config or ~/.config/ban/hosts.toml)."
CONFIG_HELP = "Config file whose \\[hosts] to use (default: ./experiments.toml when there is one)."


def out() -> Console:
    return Console(highlight=False)


def fail(message: str, code: int = EXIT_USAGE):
    """One line on stderr, then exit."""
    print(f"ban: {message}", file=sys.stderr)
    raise typer.Exit(code)


def load_config(file: Path) -> spec.Config:
    """The config, or every problem on stderr and exit 2. An experiment's `host` may name a
    host of the user's hosts file as well as one of the file's [hosts]."""
    try:
        return spec.load(file, extra_hosts=hosts_mod.load_user_hosts())
    except spec.SpecError as exc:
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        n = len(exc.problems)
        fail(f"{file}: {n} problem{'s' * (n != 1)}; nothing launched")


def pick_experiments(config: spec.Config, only: list[str], every: bool) -> list[spec.Experiment]:
    """--only names (in the order given); --all; else quickstart, else the first marked default,
    else the file's first experiment. Each picked experiment brings its independent-CE control
    (<name>+ce, from `control = "independent"`) right after it."""
    exps = config.experiments
    if only:
        for name in only:
            if name not in exps:
                fail(f"{config.path}: no experiment {name!r}{did_you_mean(name, list(exps))}; "
                     f"expected one of: {', '.join(exps)}")
        names = list(only)
    elif every:
        names = list(exps)
    elif "quickstart" in exps:
        names = ["quickstart"]
    else:
        marked = [e for e in exps.values() if getattr(e, "default", False)]
        names = [(marked or list(exps.values()))[0].name]
    names = [m for n in names for m in (n, n + CONTROL_SUFFIX) if m in exps]
    return [exps[n] for n in dict.fromkeys(names)]


def find(runs_dir: Path, ref: str) -> Path:
    try:
        return find_run(runs_dir, ref)
    except LookupError as exc:
        fail(str(exc))


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
    if any(st in ("failed", "dead", "stale") for st in statuses):
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


def wait_stopped(runs, timeout: float) -> bool:
    """Wait until none of the runs has a live engine; True if they all stopped in time."""
    deadline = time.time() + timeout
    while any(launch.running_pid(r) for r in runs):
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def cancel_and_explain(console: Console, run_dirs) -> int:
    """Ctrl-C while watching runs we started: SIGTERM them, wait for their checkpoints, say how
    to resume. A second Ctrl-C stops waiting (the engines still stop on their own)."""
    say(console, "cancelling: the engines finish their step, checkpoint and stop ...")
    for d in run_dirs:
        try:
            launch.cancel(d)
        except launch.LaunchError:
            pass
    try:
        wait_stopped(run_dirs, timeout=120)
    except KeyboardInterrupt:
        pass
    for d in run_dirs:
        say(console, f"{d.parent.name}/{d.name}: {load_state(d).status()}; resume with: ban resume {d}")
    return EXIT_CANCELLED


# ---- commands -------------------------------------------------------------------------------

@app.command()
def validate(file: Path = typer.Argument(..., help="experiments.toml")):
    """Check a config file: one line per experiment, or every problem (exit 2)."""
    config = load_config(file)
    console = out()
    for exp in config.experiments.values():
        say(console, chain_summary(exp))


@app.command()
def run(file: Path = typer.Argument(..., help="experiments.toml"),
        only: Optional[List[str]] = typer.Option(None, "--only", help="Experiment to run (repeatable)."),
        every: bool = typer.Option(False, "--all", help="Run every experiment of the file."),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (overrides the config)."),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where runs go (default: the config's runs_dir)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved chains; launch nothing."),
        detach: bool = typer.Option(False, "--detach", help="Return at once; follow later with `ban follow`."),
        host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP + " (default: the experiment's host)")):
    """Validate FILE, start one engine per (experiment, seed) and follow them live.

    Ctrl-C cancels the runs gracefully (they checkpoint; `ban resume` continues them); runs on a
    host keep going there (`ban follow RUN --host NAME` follows them again). Once the local runs
    have ended, prints their report (as `ban report`). Exit 0 when every run ended ok, 1 if any
    failed, 130 when cancelled."""
    config = load_config(file)
    exps = pick_experiments(config, only or [], every)
    console = out()
    if dry_run:
        for exp in exps:
            print_chain(console, file, exp, runs_dir or Path(exp.runs_dir), device)
        return
    launched = []
    for exp in exps:
        for seed in exp.seeds:
            try:
                if host or exp.host:
                    launched.append(remote.launch(host_named(host or exp.host, config=config), exp, seed, device=device))
                else:
                    launched.append(launch.launch_local(file, exp, seed, runs_dir or Path(exp.runs_dir), device))
            except (OSError, ValueError, remote.RemoteError) as exc:
                fail(f"cannot start {exp.name} seed {seed}: {exc}", EXIT_FAILED)
    local = [r for r in launched if not isinstance(r, remote.RemoteLaunch)]
    remotes = [r for r in launched if isinstance(r, remote.RemoteLaunch)]
    for r in launched:
        where = f"{r.host}:{r.run_dir}" if isinstance(r, remote.RemoteLaunch) else r.run_dir
        say(console, f"started {r.name} (pid {r.pid}) in {where}")
    if detach:
        if local:
            say(console, "follow with: " + shlex.join(["ban", "follow"] + [str(r.run_dir) for r in local]))
        say_follow_remote(console, remotes)
        return
    sources = ([LocalSource(r.run_dir, r.pid, r.pid_start) for r in local]
               + [remote_source(console, host_named(r.host, config=config), r.run_dir, r.pid) for r in remotes])

    def on_interrupt() -> int:
        say_follow_remote(console, remotes, "stopped following; on the hosts the runs keep going. Again: ")
        return cancel_and_explain(console, [r.run_dir for r in local]) if local else EXIT_CANCELLED

    code = watch(console, sources, on_interrupt)
    if local and code != EXIT_CANCELLED:
        rep = report_mod.collect([r.run_dir for r in local])
        if rep["experiments"]:
            say(console, "")
            say(console, "report of these runs (last-epoch test error; paired Δ = student - teacher "
                         "of the same seed, 95 % t interval; `ban report` for every run):")
            print_report(console, rep)
    raise typer.Exit(code)


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
    runs = list_runs(runs_dir)
    console = out()
    if not runs:
        say(console, f"no runs under {runs_dir}")
        return
    shown = runs if every else runs[-20:]
    now = time.time()
    print_table(console, RUN_COLUMNS, [run_row(d, load_state(d), now) for d in shown])
    if len(shown) < len(runs):
        say(console, f"({len(runs) - len(shown)} older runs not shown; --all shows them)")


@app.command()
def show(run_ref: str = typer.Argument(..., metavar="RUN", help="Run directory, experiment/run-id, run id or its prefix."),
         runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """A run's generations, ensembles and gradient diagnostics (and its stderr when it failed)."""
    root = find(default_runs_dir(runs_dir), run_ref)
    state = load_state(root)
    console = out()
    status = state.status()
    say(console, f"{state.experiment}/{state.run_id}  status {status}  seed {state.seed}  "
                 f"device {state.device or '-'}  host {state.host or '-'}  started {clock(state.started)}")
    say(console, f"directory {root}")
    rows = gen_rows(state)
    print_table(console, metric_header(with_val_selected(GEN_COLUMNS, rows), state.metric), rows, "generations")
    if state.ensembles:
        print_table(console, metric_header(ENSEMBLE_COLUMNS, state.metric), ensemble_rows(state), "ensembles")
    diag = diagnostics_rows(state)
    if diag:
        print_table(console, DIAGNOSTIC_COLUMNS, diag, "diagnostics (last epoch of each generation)")
    for message in state.errors:
        say(console, f"error: {message}")
    if status in ("failed", "dead", "stale"):
        if state.end and state.end.get("error"):
            say(console, f"run_end: {state.end['error']}")
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
    console = out()

    def detach_msg() -> int:
        say(console, "stopped following; the runs keep going. Again: "
                     + shlex.join(["ban", "follow"] + [str(r) for r in roots]))
        return EXIT_CANCELLED

    raise typer.Exit(watch(console, [LocalSource(r) for r in roots], detach_msg))


@app.command()
def resume(run_ref: str = typer.Argument(..., metavar="RUN"),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           detach: bool = typer.Option(False, "--detach", help="Return at once.")):
    """Continue a cancelled or interrupted run from its last checkpoint, and follow it."""
    root = find(default_runs_dir(runs_dir), run_ref)
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
           timeout: float = typer.Option(120.0, help="Seconds to wait.")):
    """Stop runs gracefully: SIGTERM, the engine checkpoints and ends the run as cancelled."""
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


@app.command("report")
def report_cmd(refs: Optional[List[str]] = typer.Argument(None, metavar="[RUNS...]",
                                                          help="Runs or experiment names (default: every run)."),
               runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
               fmt: str = typer.Option("table", "--format", help="table, md, csv or json.")):
    """Paper-style results: per (experiment, configuration), Teacher, BAN-k and Ens*k as mean ± std
    over seeds (the latest ok run of each seed), with the paired per-seed difference against the
    teacher and its 95 % Student-t interval. Runs left out and names that cover several
    configurations are listed under the table (on stderr for csv)."""
    formats = ("table", "md", "csv", "json")
    if fmt not in formats:
        fail(f"--format: expected one of {', '.join(formats)}, found {fmt!r}{did_you_mean(fmt, formats)}")
    runs_dir = default_runs_dir(runs_dir)
    roots = []
    for ref in refs or []:  # an experiment name means all its runs
        roots += [d for d in list_runs(runs_dir) if d.parent.name == ref] or [find(runs_dir, ref)]
    roots = roots if refs else list_runs(runs_dir)
    rep = report_mod.collect(dict.fromkeys(roots))
    console = out()
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
def models(names: Optional[List[str]] = typer.Argument(None, metavar="[NAMES...]",
                                                      help="Only these models (any registry name)."),
           classes: Optional[int] = typer.Option(None, help="Classes of the head (default: the paper's "
                                                             "for models it reports, else 10)."),
           in_channels: int = typer.Option(3, "--in-channels")):
    """The model registry with parameter counts, beside the paper's where it gives one."""
    from engine import catalog
    from engine import models as registry  # torch: only this command needs it
    paper = getattr(registry, "PAPER_PARAMS", {})
    paper_classes = getattr(registry, "PAPER_NUM_CLASSES", {})
    rows, notes = [], []
    for name in names or dict.fromkeys(catalog.model_examples() + list(paper)):
        try:
            family = catalog.resolve_model(name)[0]
        except KeyError:
            family = None
        lm = family is not None and family.kind == "lm"
        n_classes = classes or paper_classes.get(name, 10000 if lm else 10)  # PTB's vocabulary for LMs
        try:
            ours = params_str(registry.param_count(name, n_classes, in_channels))
        except Exception as exc:  # a name the registry cannot build alone: say why below, keep listing
            ours = "n/a"
            notes.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        p = paper.get(name)
        at = paper_classes.get(name, n_classes)
        rows.append({"name": name, "family": family.family if family else "-", "classes": n_classes,
                     "params": ours, "paper": "-" if p is None else f"{p:.2f}M" + (f" ({at} classes)" if at != n_classes else ""),
                     "about": family.doc if family else ""})
    print_table(out(), [("name", "name"), ("family", "family"), ("classes", "classes"), ("params", "params"),
                        ("paper", "paper"), ("about", "")], rows)
    for note in notes:
        say(out(), note)


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


def remote_source(console: Console, host: spec.Host, run_dir: str, pid: int | None = None) -> remote.RemoteSource:
    """A RemoteSource that says when its connection drops and when it is back."""
    source = remote.RemoteSource(host, run_dir, pid)

    def tell(s: remote.RemoteSource) -> None:
        if not s.connected:
            ago = s.since_last_event()
            say(console, f"{s.name}: lost the connection to {host.name} ({s.error}); retrying"
                         + (f" (last event {ago:.0f} s ago)" if ago is not None else ""))
        elif s.drops:
            say(console, f"{s.name}: reconnected to {host.name}")

    source.on_connection = tell
    return source


def say_follow_remote(console: Console, runs, prefix: str = "follow with: ") -> None:
    for name in dict.fromkeys(r.host for r in runs):
        say(console, prefix + shlex.join(["ban", "follow"] + [r.name for r in runs if r.host == name] + ["--host", name]))


def ls_remote(host: spec.Host, every: bool) -> int:
    console = out()
    try:
        runs = remote.list_remote_runs(host)
    except remote.RemoteError as exc:
        fail(str(exc), EXIT_FAILED)
    if not runs:
        say(console, f"no runs on {host.name} under {remote.remote_runs_dir(host)}")
        return 0
    shown = runs if every else runs[-20:]
    now = time.time()
    # the status comes from the host, where the engine's pid can be checked
    print_table(console, RUN_COLUMNS, [{**run_row(Path(r.dir), r.state, now), "status": r.status} for r in shown])
    if len(shown) < len(runs):
        say(console, f"({len(runs) - len(shown)} older runs not shown; --all shows them)")
    return 0


def find_remote(host: spec.Host, ref: str) -> str:
    try:
        return remote.find_remote_run(host, ref)
    except remote.RemoteError as exc:
        fail(str(exc))


def follow_remote(host: spec.Host, refs: list[str]) -> int:
    console = out()
    dirs = [find_remote(host, ref) for ref in refs]

    def detach_msg() -> int:
        say(console, "stopped following; the runs keep going. Again: "
                     + shlex.join(["ban", "follow", *refs, "--host", host.name]))
        return EXIT_CANCELLED

    return watch(console, [remote_source(console, host, d) for d in dirs], detach_msg)


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
        except remote.RemoteError as exc:
            fail(str(exc), EXIT_FAILED)


@app.command("hosts")
def hosts_cmd(config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP)):
    """The known hosts, each with its GPUs (nvidia-smi) and the runs running there."""
    from concurrent.futures import ThreadPoolExecutor
    path = config_file or Path("experiments.toml")
    try:
        known = hosts_mod.all_hosts(load_config(path) if config_file or path.exists() else None)
    except spec.SpecError as exc:
        fail(str(exc))
    console = out()
    if not known:
        say(console, f"no hosts: add [hosts.NAME] tables to {path} or {hosts_mod.user_hosts_path()}")
        return
    with ThreadPoolExecutor(max_workers=8) as pool:   # one slow box does not hold up the others
        statuses = list(pool.map(remote.gpu_status, known.values()))
    rows = [row for h, st in zip(known.values(), statuses) for row in remote.host_rows(h, st)]
    print_table(console, remote.HOST_COLUMNS, rows)


def main():
    app()


if __name__ == "__main__":
    main()
