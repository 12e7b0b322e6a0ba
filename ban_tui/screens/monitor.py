"""One run, live: its status (failed, cancelled and stale runs are marked) with the whole chain's
progress (planned epochs) and ETA, loss and error curves over the whole chain, the generation
table, the ensembles against the teacher, the gradient diagnostics and the
engine's stderr (hidden while empty). Keys: l linear/log, 0-9 hide/show a generation, t the
per-epoch table instead of the curves, e export the figure, x cancel (asks), r resume."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Header, Label, Log, Static

from ban_tui.screens import BACK
from ban_tui.widgets.footer import KeysFooter
from ban_tui.screens.runs import RUN_CONTROLS
from ban_tui.progress import chain_progress, hms, load_plan
from ban_tui.tables import (ENSEMBLE_COLUMNS, GEN_COLUMNS, STATUS_MARK, STATUS_STYLE, clock, ensemble_rows,
                            gen_rows, num, pct, with_val_selected)
from ban_tui.watch import STDERR_CAP, RunModel, RunsUpdate
from ban_tui.widgets.curves import CurvePlot, gen_offsets, legend
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


EPOCH_COLUMNS = [("gen", ""), ("epoch", "epoch"), ("train_loss", "train loss"), ("test_loss", "test loss"),
                 ("train_err", "train err"), ("test_err", "test err"), ("lr", "lr"), ("seconds", "seconds"),
                 ("grad_correct", "grad_correct"), ("grad_dark", "grad_dark")]


def epoch_rows(model: RunModel) -> list[dict]:
    """One row per epoch event kept (every generation, in order), for the per-epoch table."""
    rows = []
    for gen, events in sorted(model.epochs.items()):
        for e in events:
            diag = e.get("diagnostics") or {}
            rows.append({"gen": gen_label(gen), "epoch": str(e.get("epoch", "")),
                         **{k: num(e.get(k)) for k in ("train_loss", "test_loss")},
                         "lr": "-" if e.get("lr") is None else f"{e['lr']:.3g}",
                         **{k: pct(e.get(k)) for k in ("train_err", "test_err")},
                         "seconds": num(e.get("seconds"), 1),
                         **{k: num(diag.get(k)) for k in ("grad_correct", "grad_dark")}})
    return rows


def describe(model: RunModel, status: str, plan=None) -> Text:
    """Two lines: who and where, then the status with its reason (no clock-relative text), or
    the current generation with the whole chain's progress and ETA."""
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
        p = chain_progress(s, plan)
        line = Text(f"{g.label} epoch {g.epoch}/{g.epochs}   chain {p} epochs   ETA {hms(p.eta)}"
                    if g else "waiting for the engine to start")
    return Text("\n").join([head, line])


class RunMonitor(Screen):
    BINDINGS = [
        BACK,
        Binding("l", "toggle_log", "Log/linear"),
        Binding("t", "toggle_table", "Epoch table"),
        Binding("e", "export", "Export figure"),
        *RUN_CONTROLS,
    ] + [Binding(str(k), f"toggle_gen({k})", "Hide/show gen", show=k == 0) for k in range(10)]
    # below 100 columns the diagnostics keep their sparklines and drop the last values (t shows them)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    DEFAULT_CSS = """
    RunMonitor.-narrow DiagnosticsRow .value { display: none; }
    RunMonitor #status { height: 2; padding: 0 1; }
    RunMonitor #curves { height: 1fr; min-height: 10; }
    RunMonitor #legend { height: 1; padding: 0 1; }
    RunMonitor #gens { height: auto; max-height: 10; }
    RunMonitor #lower { height: auto; }
    RunMonitor #ensembles-box { width: auto; height: auto; margin-right: 2; }
    RunMonitor #ensembles { height: auto; width: auto; }
    RunMonitor DiagnosticsPanel { width: 1fr; }
    RunMonitor #epochs { height: 1fr; max-height: 100%; display: none; }
    RunMonitor.table #epochs { display: block; }
    RunMonitor.table #curves, RunMonitor.table #legend { display: none; }
    RunMonitor #stderr-box { height: 7; border-top: solid $secondary; display: none; }
    RunMonitor #stderr-box.has-lines { display: block; }
    RunMonitor #stderr { height: 1fr; }
    RunMonitor .caption { text-style: bold; padding: 0 1; }
    """

    def __init__(self, run_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.stderr_seen = 0
        self.plan = load_plan(self.run_dir)   # the snapshot's generations: whole-chain totals and axis
        self.hidden: set[int] = set()        # generations not drawn (number keys)
        self.log_scale = False
        self.model: RunModel | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        with Horizontal(id="curves"):
            yield CurvePlot("loss", ("train_loss", "test_loss"), id="loss")
            yield CurvePlot("error (%)", ("train_err", "test_err", "train_ppl", "test_ppl"), id="error")
        yield Static("", id="legend")
        yield RowsTable(EPOCH_COLUMNS, id="epochs")
        yield RowsTable(GEN_COLUMNS, id="gens")
        with Horizontal(id="lower"):
            with Vertical(id="ensembles-box"):
                yield Label("ensembles vs the teacher", classes="caption")
                yield RowsTable(ENSEMBLE_COLUMNS, id="ensembles")
            yield DiagnosticsPanel(id="diagnostics")
        with Vertical(id="stderr-box"):
            yield Label("engine stderr", classes="caption", id="stderr-title")
            yield Log(max_lines=STDERR_CAP, id="stderr")
        yield KeysFooter()

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
        self.model = model
        self.sub_title = status
        self.query_one("#status", Static).update(describe(model, status, self.plan))
        self.draw_curves(model)
        if self.has_class("table"):
            rows = epoch_rows(model)
            self.query_one("#epochs", RowsTable).show(rows, [f"{r['gen']}:{r['epoch']}" for r in rows])
        rows = gen_rows(model.state)   # "test @ min val" only where there is a validation split
        self.query_one("#gens", RowsTable).show(rows, [gen_label(g) for g in sorted(model.state.gens)],
                                                with_val_selected(GEN_COLUMNS, rows))
        rows = ensemble_rows(model.state)
        self.query_one("#ensembles", RowsTable).show(rows, [r["ensemble"] for r in rows])
        self.query_one(DiagnosticsPanel).show(model.diagnostics)
        new = model.stderr_lines - self.stderr_seen
        if new > 0:
            self.query_one(Log).write_lines(list(model.stderr)[-min(new, len(model.stderr)):])
            self.stderr_seen = model.stderr_lines
            self.query_one("#stderr-title", Label).update(f"engine stderr ({model.stderr_lines} lines)")
            self.query_one("#stderr-box").add_class("has-lines")

    def draw_curves(self, model: RunModel) -> None:
        offsets = gen_offsets(model.state.gens, self.plan)
        for plot in self.query(CurvePlot):
            plot.show(model.curves, offsets, self.hidden, self.log_scale)
        self.query_one("#legend", Static).update(legend(model.state.gens, self.hidden))

    def redraw(self) -> None:
        """A view setting changed: draw again from the model now (under the watcher's lock)."""
        if self.model is not None:
            with self.app.watcher.lock:
                self.show(self.model, self.model.status())

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.redraw()

    def action_toggle_gen(self, gen: int) -> None:
        self.hidden.symmetric_difference_update({gen})
        self.redraw()

    def action_toggle_table(self) -> None:
        self.toggle_class("table")
        self.redraw()

    def action_export(self) -> None:
        self.app.export_figure(self.run_dir)

    def action_cancel(self) -> None:
        self.app.confirm_cancel(str(self.run_dir))

    def action_resume(self) -> None:
        self.app.resume_run(str(self.run_dir))
