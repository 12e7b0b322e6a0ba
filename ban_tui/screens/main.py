"""The main screen: one tab per panel of PANELS (experiments, runs, hosts), with the app's
bindings in the footer.

PANELS is the one list of the main screen's panels: the tabs, their keys (the app's bindings)
and the "Show ..." commands of the palette all come from it. A new panel is a module in
ban_tui/screens/ and one line here.

Only the panel shown first is built before the first frame; the hidden ones are mounted right
after it (or at once when shown first): styling and laying out widgets nobody sees yet was a
third of the start-up time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textual.app import ComposeResult
from textual.lazy import Lazy
from textual.screen import Screen
from textual.widget import AwaitMount, Widget
from textual.widgets import Header, TabbedContent, TabPane

from ban_tui.widgets.footer import KeysFooter
from ban_tui.screens.experiments import ExperimentsPane


@dataclass(frozen=True)
class Panel:
    id: str                               # the tab's id; `app.show_panel(id)` switches to it
    title: str
    key: str                              # the app's binding that shows it
    make: Callable[..., Widget]           # make(app) -> the tab's content


def runs_pane(app) -> Widget:
    from ban_tui.screens.runs import RunsPane   # imported when built: after the first frame
    return RunsPane(app.runs_dir, id="runs-pane")


def hosts_pane(app) -> Widget:
    from ban_tui.screens.hosts import HostsPane   # with ssh and the GPU queries: after the first frame
    return HostsPane(app.config_path, id="hosts-pane")


PANELS: tuple[Panel, ...] = (
    Panel("experiments", "Experiments", "f2", lambda app: ExperimentsPane(app.config_path, id="experiments-pane")),
    Panel("runs", "Runs", "f3", runs_pane),
    Panel("hosts", "Hosts", "f4", hosts_pane),
)


class MainScreen(Screen):
    # under 100 columns the experiment list gives the form room (app.tcss: MainScreen.-narrow)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(self, initial: str = "experiments", **kwargs):
        super().__init__(**kwargs)
        self.initial = initial
        self.unbuilt = [p for p in PANELS if p.id != initial]   # mounted after the first frame
        self.mounting: dict[str, AwaitMount] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial=self.initial, id="panels"):
            for panel in PANELS:
                with TabPane(panel.title, id=panel.id):
                    if panel.id == self.initial:
                        yield panel.make(self.app)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.activate(self.initial)
        self.call_after_refresh(self.build_hidden)

    async def build(self, panel_id: str) -> None:
        """Mount a panel's content unless it is mounted already (or wait for a mount under way)."""
        for panel in [p for p in self.unbuilt if p.id == panel_id]:
            self.unbuilt.remove(panel)
            self.mounting[panel.id] = self.query_one(f"TabPane#{panel.id}").mount(panel.make(self.app))
        if panel_id in self.mounting:
            await self.mounting[panel_id]
            self.mounting.pop(panel_id, None)

    @property
    def built(self) -> bool:
        """Every panel mounted, with what each mounts after the first frame (textual.lazy.Lazy)."""
        return not self.unbuilt and not self.mounting and not self.query(Lazy)

    async def build_hidden(self) -> None:
        for panel in list(self.unbuilt):
            await self.build(panel.id)

    def activate(self, panel: str) -> None:
        """Show a panel and focus its first control, so its keys work at once (a panel not built
        yet is built first)."""
        self.query_one("#panels", TabbedContent).active = panel
        if any(p.id == panel for p in self.unbuilt):
            self.call_next(self._build_and_focus, panel)
        else:
            self._focus_first(panel)

    async def _build_and_focus(self, panel: str) -> None:
        await self.build(panel)
        self._focus_first(panel)

    def _focus_first(self, panel: str) -> None:
        focusable = [w for w in self.query_one(f"TabPane#{panel}").query("*") if w.focusable and w.display]
        if focusable and self.app.screen is self:
            focusable[0].focus()
