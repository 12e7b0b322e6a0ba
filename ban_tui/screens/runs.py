"""The runs panel: every run of the runs directory with its status, progress and best error,
updated live; open one (enter), mark several (space) and compare them (c), cancel (x, asks),
resume (r), delete a finished one (d, asks)."""
from __future__ import annotations

import shutil
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Label

from ban_tui.tables import RUN_COLUMNS, run_row, status_label
from engine.runs import RunPaths, load_state, pid_alive
from ban_tui.watch import RunsUpdate
from ban_tui.widgets.rows import RowsTable

COLUMNS = [("mark", "")] + RUN_COLUMNS


def remove_run(run_dir: Path) -> None:
    """Delete a run's directory: only a run directory (it has events.jsonl), never a live run."""
    run_dir = Path(run_dir)
    if not RunPaths(run_dir).events.is_file():
        raise OSError(f"{run_dir} is not a run directory (no events.jsonl)")
    state = load_state(run_dir)
    if state.end is None and pid_alive(state.pid, state.pid_start):
        raise OSError(f"{run_dir}: the engine (pid {state.pid}) is still running it")
    shutil.rmtree(run_dir)


class RunsTable(RowsTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open"),   # DataTable posts RowSelected (so does a click)
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        Binding("x", "cancel", "Cancel run"),
        Binding("r", "resume", "Resume run"),
        Binding("d", "delete", "Delete run"),
    ]

    def __init__(self, **kwargs):
        super().__init__(COLUMNS, **kwargs)
        self.marked: set[str] = set()

    def action_mark(self) -> None:
        key = self.cursor_key
        if key is None:
            return
        self.marked.symmetric_difference_update({key})
        self.update_cell(key, "mark", "*" if key in self.marked else "", update_width=True)

    def action_compare(self) -> None:
        keys = [k for k in self.row_keys() if k in self.marked]
        if len(keys) < 2:
            self.app.notify("mark two or more runs with space to compare them", severity="warning")
            return
        self.app.compare_runs(keys)

    def action_cancel(self) -> None:
        if self.cursor_key:
            self.app.confirm_cancel(self.cursor_key)

    def action_delete(self) -> None:
        if self.cursor_key:
            self.app.confirm_delete(self.cursor_key)

    def action_resume(self) -> None:
        if self.cursor_key:
            self.app.resume_run(self.cursor_key)


class RunsPane(Vertical):
    DEFAULT_CSS = "RunsPane RunsTable { height: 1fr; }"

    def __init__(self, runs_dir, **kwargs):
        super().__init__(**kwargs)
        self.runs_dir = runs_dir
        self.rows: dict = {}   # run_dir -> its row, recomputed only when the run changed (or on a tick)

    def compose(self) -> ComposeResult:
        yield Label(f"runs in {self.runs_dir}  (enter opens, space marks, c compares)", id="runs-title")
        yield RunsTable(id="runs-table")

    def on_mount(self) -> None:
        self.watch(self.app, "runs", self.show_runs, init=False)

    def show_runs(self, update: RunsUpdate) -> None:
        """Recompute the rows of the runs that changed (of every run on a periodic tick)."""
        table = self.query_one(RunsTable)
        for run_dir, model in update.models.items():
            if update.touches(run_dir) or run_dir not in self.rows:
                row = run_row(run_dir, model.state, update.now)
                row["status"] = status_label(model.status(), model.state)
                self.rows[run_dir] = row
        keys = sorted(update.models, key=lambda d: (d.name[:15], str(d)))   # oldest first, as list_runs
        for d in keys:
            self.rows[d]["mark"] = "*" if str(d) in table.marked else ""
        table.show([self.rows[d] for d in keys], [str(d) for d in keys])

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(event.row_key.value)
