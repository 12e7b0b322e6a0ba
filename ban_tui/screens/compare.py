"""Two or more runs side by side: their generation and ensemble tables."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from ban_tui.tables import ENSEMBLE_COLUMNS, GEN_COLUMNS, ensemble_rows, gen_rows, pick
from ban_tui.watch import RunModel, RunsUpdate
from ban_tui.widgets.rows import RowsTable
from engine.runs import gen_label

# narrower than the monitor's tables: the runs stand side by side
COMPARE_GEN_COLUMNS = pick(GEN_COLUMNS, "generation", "objective", "model", "epochs", "test", "val_selected")
COMPARE_ENSEMBLE_COLUMNS = pick(ENSEMBLE_COLUMNS, "ensemble", "test", "vs_teacher")


class CompareScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]
    DEFAULT_CSS = """
    CompareScreen .run { width: 1fr; border: round $secondary; }
    CompareScreen .run Static { height: auto; text-style: bold; }
    CompareScreen .run RowsTable { margin-bottom: 1; }
    """

    def __init__(self, run_dirs: list[Path], **kwargs):
        super().__init__(**kwargs)
        self.run_dirs = [Path(d) for d in run_dirs]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            for i, _ in enumerate(self.run_dirs):
                with VerticalScroll(classes="run", id=f"run-{i}"):
                    yield Static("", classes="title")
                    yield RowsTable(COMPARE_GEN_COLUMNS, classes="gens")
                    yield RowsTable(COMPARE_ENSEMBLE_COLUMNS, classes="ensembles")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "runs", self.show_runs, init=False)

    def on_screen_resume(self) -> None:   # shown, or shown again: draw at the next tick
        for d in self.run_dirs:
            self.app.refresh_run(d)

    def show_runs(self, update: RunsUpdate) -> None:
        """Draw the runs that changed, while this screen is shown (not while covered or closing)."""
        if not self.is_current:
            return
        for i, d in enumerate(self.run_dirs):
            if update.touches(d):
                model = update.models[d]
                self.show(self.query_one(f"#run-{i}"), model, model.status())

    @staticmethod
    def show(box, model: RunModel, status: str) -> None:
        """Redraw one run's column from its model."""
        s = model.state
        box.query_one(".title", Static).update(f"{s.experiment}/{s.run_id}\n{status}")
        box.query_one(".gens", RowsTable).show(gen_rows(s), [gen_label(g) for g in sorted(s.gens)])
        rows = ensemble_rows(s)
        box.query_one(".ensembles", RowsTable).show(rows, [r["ensemble"] for r in rows])
