"""One run, live: its status (failed, cancelled and stale runs are marked), loss and error curves,
the generation table, the ensembles against the best single generation, the gradient
diagnostics and the engine's stderr. x cancels the run, r resumes it."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Log, Static

from ban_tui.tables import (ENSEMBLE_COLUMNS, GEN_COLUMNS, STATUS_MARK, STATUS_STYLE, clock, ensemble_rows,
                            gen_rows)
from ban_tui.watch import STDERR_CAP, RunModel, RunsUpdate
from ban_tui.widgets.curves import CurvePlot, legend
from ban_tui.widgets.diagnostics import DiagnosticsPanel
from ban_tui.widgets.rows import RowsTable
from engine.runs import gen_label

WHY = {
    "failed": "the run failed",
    "cancelled": "the run was cancelled; r resumes it from its last checkpoint",
    "preempted": "stopped for a requeue (Slurm); it continues from its last checkpoint when the job runs again",
    "stale": "no event lately and the engine is not known to be alive; x cancels, r resumes",
    "dead": "the engine process is gone and the run never ended; r resumes it",
}


def describe(model: RunModel, status: str) -> Text:
    """Two lines: who and where, then the status with its reason (no clock-relative text)."""
    s = model.state
    name = f"{s.experiment or model.run_dir.parent.name}/{s.run_id or model.run_dir.name}"
    head = Text.assemble((name, "bold"), "  ", (f"{STATUS_MARK.get(status, '')} {status.upper()}",
                                                  STATUS_STYLE.get(status, "")))
    head.append(f"   seed {s.seed if s.seed is not None else '-'}  device {s.device or '-'}  host {s.host or '-'}")
    if status in WHY:
        reason = WHY[status]
        if status == "failed":
            error = (s.end or {}).get("error") or (s.errors[-1] if s.errors else "")
            reason = f"{reason}: {error}" if error else f"{reason} (see stderr below)"
        if status in ("stale", "dead"):
            reason += f" (last event {clock(s.last_ts)})"
        line = Text(f"{STATUS_MARK[status]} {reason}", style=STATUS_STYLE[status])
    else:
        g = s.gens[max(s.gens)] if s.gens else None
        line = Text(f"{g.label} epoch {g.epoch}/{g.epochs}" if g else "waiting for the engine to start")
    return Text("\n").join([head, line])


class RunMonitor(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("x", "cancel", "Cancel run"),
        Binding("r", "resume", "Resume run"),
    ]
    DEFAULT_CSS = """
    RunMonitor #status { height: 2; padding: 0 1; }
    RunMonitor #curves { height: 1fr; min-height: 10; }
    RunMonitor #legend { height: 1; padding: 0 1; }
    RunMonitor #gens { height: auto; max-height: 10; }
    RunMonitor #lower { height: auto; }
    RunMonitor #ensembles-box { width: 2fr; height: auto; }
    RunMonitor #ensembles { height: auto; }
    RunMonitor DiagnosticsPanel { width: 3fr; }
    RunMonitor #stderr { height: 6; border-top: solid $secondary; }
    RunMonitor .caption { text-style: bold; padding: 0 1; }
    """

    def __init__(self, run_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.stderr_seen = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        with Horizontal(id="curves"):
            yield CurvePlot("loss", ("train_loss", "test_loss"), id="loss")
            yield CurvePlot("error", ("train_err", "test_err", "train_ppl", "test_ppl"), id="error")
        yield Static("", id="legend")
        yield RowsTable(GEN_COLUMNS, id="gens")
        with Horizontal(id="lower"):
            with Vertical(id="ensembles-box"):
                yield Label("ensembles vs the best single generation", classes="caption")
                yield RowsTable(ENSEMBLE_COLUMNS, id="ensembles")
            yield DiagnosticsPanel(id="diagnostics")
        yield Log(max_lines=STDERR_CAP, id="stderr")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "runs", self.show_runs, init=False)

    def on_screen_resume(self) -> None:   # shown, or shown again: draw at the next tick
        self.app.refresh_run(self.run_dir)

    def show_runs(self, update: RunsUpdate) -> None:
        """Draw the run when it changed, while this screen is shown (not while covered or closing)."""
        if self.is_current and update.touches(self.run_dir):
            model = update.models[self.run_dir]
            self.show(model, model.status())

    def show(self, model: RunModel, status: str) -> None:
        """Redraw every part from the model (under the watcher's lock)."""
        self.sub_title = status
        self.query_one("#status", Static).update(describe(model, status))
        self.query_one("#loss", CurvePlot).show(model.curves)
        self.query_one("#error", CurvePlot).show(model.curves)
        self.query_one("#legend", Static).update(legend(model.state.gens))
        self.query_one("#gens", RowsTable).show(gen_rows(model.state), [gen_label(g) for g in sorted(model.state.gens)])
        rows = ensemble_rows(model.state)
        self.query_one("#ensembles", RowsTable).show(rows, [r["ensemble"] for r in rows])
        self.query_one(DiagnosticsPanel).show(model.diagnostics)
        new = model.stderr_lines - self.stderr_seen
        if new > 0:
            self.query_one(Log).write_lines(list(model.stderr)[-min(new, len(model.stderr)):])
            self.stderr_seen = model.stderr_lines

    def action_cancel(self) -> None:
        self.app.cancel_run(str(self.run_dir))

    def action_resume(self) -> None:
        self.app.resume_run(str(self.run_dir))
