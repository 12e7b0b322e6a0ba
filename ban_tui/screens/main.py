"""The main screen: one tab per registered panel (experiments, runs, and any panel another module
registers, such as a hosts panel), with the app's bindings in the footer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, TabbedContent, TabPane

from ban_tui.screens.experiments import ExperimentsPane
from ban_tui.screens.runs import RunsPane


@dataclass(frozen=True)
class Panel:
    id: str                               # the tab's id; `app.show_panel(id)` switches to it
    title: str
    make: Callable[..., Widget]           # make(app) -> the tab's content


PANELS: list[Panel] = [
    Panel("experiments", "Experiments", lambda app: ExperimentsPane(app.config_path, id="experiments-pane")),
    Panel("runs", "Runs", lambda app: RunsPane(app.runs_dir, id="runs-pane")),
]


def register_panel(panel: Panel) -> None:
    """Add a tab (e.g. the hosts panel); call before the app starts. App binding f4 shows a
    panel registered with id "hosts"."""
    if all(p.id != panel.id for p in PANELS):
        PANELS.append(panel)


class MainScreen(Screen):
    def __init__(self, initial: str = "experiments", **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial=self.initial, id="panels"):
            for panel in PANELS:
                with TabPane(panel.title, id=panel.id):
                    yield panel.make(self.app)
        yield Footer()

    def on_mount(self) -> None:
        self.activate(self.initial)

    def activate(self, panel: str) -> None:
        """Show a panel and focus its first control, so its keys work at once."""
        self.query_one("#panels", TabbedContent).active = panel
        focusable = [w for w in self.query_one(f"TabPane#{panel}").query("*") if w.focusable]
        if focusable and self.app.screen is self:
            focusable[0].focus()
