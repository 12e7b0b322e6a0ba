"""The main screen: one tab per panel of PANELS (experiments, runs, hosts), with the app's
bindings in the footer.

PANELS is the one list of the main screen's panels: the tabs, their keys (the app's bindings)
and the "Show ..." commands of the palette all come from it. A new panel is a module in
ban_tui/screens/ and one line here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, TabbedContent, TabPane

from ban_tui.widgets.footer import KeysFooter
from ban_tui.screens.experiments import ExperimentsPane
from ban_tui.screens.hosts import HostsPane
from ban_tui.screens.runs import RunsPane


@dataclass(frozen=True)
class Panel:
    id: str                               # the tab's id; `app.show_panel(id)` switches to it
    title: str
    key: str                              # the app's binding that shows it
    make: Callable[..., Widget]           # make(app) -> the tab's content


PANELS: tuple[Panel, ...] = (
    Panel("experiments", "Experiments", "f2", lambda app: ExperimentsPane(app.config_path, id="experiments-pane")),
    Panel("runs", "Runs", "f3", lambda app: RunsPane(app.runs_dir, id="runs-pane")),
    Panel("hosts", "Hosts", "f4", lambda app: HostsPane(app.config_path, id="hosts-pane")),
)


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
        yield KeysFooter()

    def on_mount(self) -> None:
        self.activate(self.initial)

    def activate(self, panel: str) -> None:
        """Show a panel and focus its first control, so its keys work at once."""
        self.query_one("#panels", TabbedContent).active = panel
        focusable = [w for w in self.query_one(f"TabPane#{panel}").query("*") if w.focusable and w.display]
        if focusable and self.app.screen is self:
            focusable[0].focus()
