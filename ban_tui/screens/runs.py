"""The runs panel: every run of the runs directory with its status, progress, last test error,
objectives, seed, configuration hash (as `ban report` groups runs) and tags, updated live; open
one (enter), mark several (space) and compare them (c), cancel (x, asks), resume (r), delete one
that is not running (d, asks; as `ban rm`); filter (/: every word must appear in the experiment, run id, objective
or tags; esc clears it) and sort (s cycles the column)."""
from __future__ import annotations

import json
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Label

from ban_tui import notes
from ban_tui.tables import RUN_COLUMNS, chain_objectives, current_gen, pick, run_row, short_run_name, status_label
from engine.runs import RunPaths, snapshot_experiment
from ban_tui.watch import RunsUpdate
from ban_tui.widgets.rows import RowsTable

COLUMNS = [("mark", "")] + pick(RUN_COLUMNS, "run", "status", "progress", "generation", "last") + [
    ("objective", "objective"), ("seed", "seed"), ("config", "config"), ("tags", "tags"), ("started", "started")]
NAME_WIDTH = 44          # experiment/run-id: the experiment is cut first, with an ellipsis
# what `s` cycles through: (column, heading); "started" is the runs' start order (oldest first)
SORTS = [("started", "started"), ("run", "run"), ("status", "status"), ("last", "last test"),
         ("objective", "objective"), ("seed", "seed"), ("config", "config")]


def run_facts(run_dir: Path, state) -> dict:
    """What the snapshot tells of a run and never changes: its chain's objectives and its
    configuration hash as `ban report` computes it (without a snapshot: the started
    generations' objectives and run_start's hash; "snapshot" False says to look again later)."""
    from ban_tui.report import config_key   # its statistics import scipy only when used
    exp = snapshot_experiment(run_dir)   # read once: the objectives and the hash both come from it
    try:
        objectives = [str(g.get("objective", "")) for g in exp.get("generation", [])]
        snapshot = True
    except (TypeError, AttributeError):   # no snapshot, or generations that are not tables
        objectives, snapshot = [g.objective for _, g in sorted(state.gens.items())], False
    config = config_key(exp, first_event(RunPaths(run_dir).events))
    return {"objective": chain_objectives(objectives), "config": "-" if config == "unknown" else config,
            "snapshot": snapshot}


def first_event(path: Path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(f.readline())]
    except (OSError, ValueError):
        return []


def remove_run(run_dir: Path) -> str:
    """Delete a run's directory as `ban rm` does (this machine's backend): only a run directory,
    never a live run; a queued one leaves the queue. OSError when refused."""
    from ban_tui.backends import backend_for
    from ban_tui.backends.base import FAILURES
    run_dir = Path(run_dir)
    if not (RunPaths(run_dir).events.is_file() or (run_dir / "queued").is_file()):
        raise OSError(f"{run_dir} is not a run directory (no events.jsonl)")
    try:
        return backend_for(None, run_dir.parent.parent).rm(str(run_dir))
    except FAILURES as exc:
        raise OSError(f"{run_dir}: not removed, still running: {exc}") from None


# the keys that control the run under the cursor (the runs table) or on the screen (the monitor)
RUN_CONTROLS = [Binding("x", "cancel", "Cancel run"), Binding("r", "resume", "Resume run")]


class RunsTable(RowsTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open"),   # DataTable posts RowSelected (so does a click)
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        *RUN_CONTROLS,
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
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]
    DEFAULT_CSS = """
    RunsPane RunsTable { height: 1fr; }
    RunsPane #runs-filter { display: none; height: 3; }
    RunsPane.filtering #runs-filter { display: block; }
    """

    def __init__(self, runs_dir, **kwargs):
        super().__init__(**kwargs)
        self.runs_dir = runs_dir
        self.rows: dict = {}    # run_dir -> its row, recomputed only when the run changed (or on a tick)
        self.facts: dict = {}   # run_dir -> run_facts (read once there is a snapshot)
        self.sort_values: dict = {}   # run_dir -> {column: a value to sort by}
        self.shown: list[Path] = []   # the followed runs as of the last update
        self.sort = 0           # index into SORTS
        self.query_text = ""

    def compose(self) -> ComposeResult:
        yield Label("", id="runs-title")
        yield Input(placeholder="filter: words of the experiment, run id, objective or tags (enter: table, esc: clear)",
                    id="runs-filter")
        yield RunsTable(id="runs-table")

    def on_mount(self) -> None:
        self.show_title(0, 0)
        self.watch(self.app, "runs", self.show_runs, init=False)
        self.app.refresh_all()   # mounted after the first frame: the runs followed until now too

    def show_runs(self, update: RunsUpdate) -> None:
        """Recompute the rows of the runs that changed (of every run on a periodic tick)."""
        for run_dir, model in update.models.items():
            if update.touches(run_dir) or run_dir not in self.rows:
                self.rows[run_dir], self.sort_values[run_dir] = self.row_of(run_dir, model, update.now)
        self.shown = list(update.models)
        self.render_rows()

    def row_of(self, run_dir: Path, model, now: float) -> tuple[dict, dict]:
        """A run's row and the values its columns sort by."""
        state = model.state
        facts = self.facts.get(run_dir)
        if facts is None or not facts["snapshot"]:
            facts = self.facts[run_dir] = run_facts(run_dir, state)
        row = run_row(run_dir, state, now)
        name = row["run"]
        g = current_gen(state)
        row.update(run=short_run_name(name, NAME_WIDTH), status=status_label(model.status(), state),
                   objective=facts["objective"], config=facts["config"], tags=notes.tags_str(run_dir),
                   seed="-" if state.seed is None else str(state.seed))
        last = g.test if g is not None and g.test is not None else float("inf")
        values = {"started": (run_dir.name[:15], str(run_dir)), "run": name.lower(), "status": row["status"],
                  "last": last, "objective": row["objective"], "seed": -1 if state.seed is None else state.seed,
                  "config": row["config"],
                  "text": " ".join([name, row["objective"], row["tags"]]).lower()}
        return row, values

    def matches(self, run_dir: Path) -> bool:
        text = self.sort_values[run_dir]["text"]
        return all(word in text for word in self.query_text.lower().split())

    def render_rows(self) -> None:
        """The rows that match the filter, in the sort's order (ties in start order)."""
        table = self.query_one(RunsTable)
        column = SORTS[self.sort][0]
        keys = sorted((d for d in self.shown if self.matches(d)),
                      key=lambda d: (self.sort_values[d][column], self.sort_values[d]["started"]))
        for d in keys:
            self.rows[d]["mark"] = "*" if str(d) in table.marked else ""
        table.show([self.rows[d] for d in keys], [str(d) for d in keys])
        self.show_title(len(keys), len(self.shown))

    def show_title(self, shown: int, total: int) -> None:
        text = f"runs in {self.runs_dir} · sorted by {SORTS[self.sort][1]} (s)"
        text += f" · filter {self.query_text!r}: {shown} of {total}" if self.query_text else " · / filters"
        self.query_one("#runs-title", Label).update(text)

    def action_sort(self) -> None:
        self.sort = (self.sort + 1) % len(SORTS)
        self.render_rows()

    def action_filter(self) -> None:
        self.add_class("filtering")
        self.query_one("#runs-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#runs-filter", Input).value = ""
        self.query_text = ""
        self.remove_class("filtering")
        self.query_one(RunsTable).focus()
        self.render_rows()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self.render_rows()

    @on(Input.Submitted, "#runs-filter")
    def _filter_done(self) -> None:
        if not self.query_text:
            self.remove_class("filtering")
        self.query_one(RunsTable).focus()

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(event.row_key.value)
