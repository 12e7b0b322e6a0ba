"""Terminal output of the CLI: the live view of running chains, and tables.

On a terminal: rich progress bars (one per generation, with epoch, loss, error and ETA) and
rich tables. Anywhere else (a pipe, a file, CI): plain lines, one per event, no redraws and no
colour. Rich honours NO_COLOR by itself. The rows come from ban_tui.tables.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from ban_tui.progress import chain_progress, hms, load_plan
from ban_tui.tables import (ENSEMBLE_COLUMNS, GEN_COLUMNS, STATUS_STYLE, duration, ensemble_rows, event_line,
                            gen_eta, gen_rows, metric_str, num, render_plain)


def say(console: Console, text: str) -> None:
    """A plain line as it is: never wrapped, never styled (the text may hold [brackets]).
    Output that fails (a closed pipe: `ban run | tee` whose tee died) is dropped, never raised:
    what the command is doing (cancelling runs) must go on."""
    try:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    except (OSError, ValueError):   # BrokenPipeError, EIO, or a closed file
        drop_stdout()


class OutputConsole(Console):
    """A rich Console whose closed pipe ends the output, not the program (rich's default is
    SystemExit(1), which would stop `ban run` half way through cancelling its engines)."""

    def on_broken_pipe(self) -> None:
        drop_stdout()


def drop_stdout() -> None:
    """From now on stdout goes to /dev/null (so neither later lines nor the final flush fail)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass

TEXT_COLUMNS = ("generation", "run", "ensemble", "members", "model", "objective", "status", "started",
                "name", "family", "about", "experiment", "metric", "schedule", "teacher", "inherit", "tags")


def print_table(console: Console, columns: list[tuple[str, str]], rows: list[dict], title: str = "") -> None:
    if not console.is_terminal:
        if title:
            say(console, title)
        say(console, render_plain(columns, rows) if rows else "(none)")
        return
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for key, head in columns:
        left = key in TEXT_COLUMNS
        table.add_column(head, justify="left" if left else "right", no_wrap=key != "run",
                         overflow="fold" if key == "run" else "ellipsis")
    for r in rows:
        table.add_row(*[Text(str(r.get(k, "")), style=STATUS_STYLE.get(r.get(k), "") if k == "status" else "")
                        for k, _ in columns])
    try:
        console.print(table)
    except (OSError, ValueError):
        drop_stdout()


def metric_header(columns, metric: str):
    """The 'test' column named after what it holds."""
    word = "ppl" if metric == "ppl" else "err"
    return [(k, h.replace("test", f"test {word}") if "test" in h else h) for k, h in columns]


def print_summary(console: Console, sources) -> None:
    """Per run: the generation table and, when there are ensembles, the ensemble table."""
    for s in sources:
        state = s.state
        print_table(console, metric_header(GEN_COLUMNS, state.metric), gen_rows(state), f"{s.name} ({s.status()})")
        if state.ensembles:
            print_table(console, metric_header(ENSEMBLE_COLUMNS, state.metric), ensemble_rows(state))


class PlainView:
    """One line per event (heartbeats excepted), for pipes and files."""

    def __init__(self, console: Console):
        self.console = console

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, source, events) -> None:
        for e in events:
            line = event_line(source.name, e)
            if line:
                say(self.console, line)


class LiveView(PlainView):
    """A progress bar per (run, generation); other notable events printed above the bars."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[info]}"), console=console, refresh_per_second=4)
        self.tasks: dict[tuple[str, int], int] = {}
        self.plans: dict[str, list | None] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def __call__(self, source, events) -> None:
        for e in events:
            if e.get("kind") in ("gen_start", "epoch", "gen_end"):
                self.update(source, e["gen"])
            elif e.get("kind") != "heartbeat":
                line = event_line(source.name, e)
                if line:
                    say(self.progress.console, line)

    def update(self, source, gen: int) -> None:
        g = source.state.gens[gen]
        key = (source.name, gen)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{source.name} {g.label}", total=g.epochs or None, info="")
        loss = g.last.get("train_loss")
        info = (f"epoch {g.epoch}/{g.epochs}  loss {num(loss)}  "
                f"{'ppl' if g.metric == 'ppl' else 'err'} {metric_str(g.test, g.metric)}  "
                f"ETA {hms(gen_eta(g))}  (chain {self.chain(source)})")
        self.progress.update(self.tasks[key], completed=g.epoch, total=g.epochs or None, info=info)

    def chain(self, source) -> str:
        """'33/60 epochs, ETA 0:02:21': the whole chain, planned from a local run's snapshot."""
        if source.name not in self.plans:   # a run on a host: no snapshot here
            self.plans[source.name] = load_plan(Path(source.run_dir)) if source.local else None
        p = chain_progress(source.state, self.plans[source.name])
        return f"{p} epochs, ETA {hms(p.eta)}"


def open_view(console: Console) -> PlainView:
    return LiveView(console) if console.is_terminal else PlainView(console)
