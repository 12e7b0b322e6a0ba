"""Two or more runs side by side: their generation and ensemble tables."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from ban_tui.tables import ensemble_rows, gen_rows
from ban_tui.watch import RunModel
from ban_tui.widgets.rows import RowsTable
from engine.runs import gen_label

GEN_COLUMNS = [("generation", ""), ("objective", "objective"), ("model", "model"), ("epochs", "epochs"),
               ("test", "test"), ("val_selected", "test @ min val")]
ENSEMBLE_COLUMNS = [("ensemble", ""), ("test", "test"), ("vs_teacher", "vs Teacher")]


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
        self.ready = False    # mounted: the app may draw into it

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            for i, _ in enumerate(self.run_dirs):
                with VerticalScroll(classes="run", id=f"run-{i}"):
                    yield Static("", classes="title")
                    yield RowsTable(GEN_COLUMNS, classes="gens")
                    yield RowsTable(ENSEMBLE_COLUMNS, classes="ensembles")
        yield Footer()

    def on_unmount(self) -> None:
        self.ready = False

    def on_mount(self) -> None:
        self.ready = True
        for d in self.run_dirs:
            self.app.refresh_run(d)

    def show(self, run_dir: Path, model: RunModel, status: str) -> None:
        box = self.query_one(f"#run-{self.run_dirs.index(Path(run_dir))}")
        s = model.state
        box.query_one(".title", Static).update(f"{s.experiment}/{s.run_id}\n{status}")
        box.query_one(".gens", RowsTable).show(gen_rows(s), [gen_label(g) for g in sorted(s.gens)])
        rows = ensemble_rows(s)
        box.query_one(".ensembles", RowsTable).show(rows, [r["ensemble"] for r in rows])
