"""The hosts panel (F4): every remote box of the config and of ~/.config/ban/hosts.toml with its
GPUs (nvidia-smi over ssh) and the runs live there; enter follows those runs in the runs panel,
each with its backend's source (a queued run's, a Slurm job's: ban_tui.backends).

The boxes are asked in a thread worker, all at once, while the panel is shown (every
REFRESH_SECONDS, and at once with r), so a slow or unreachable box never blocks the app.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Label

from ban_tui import hosts
from ban_tui.remote.gpus import HostStatus
from ban_tui.backends import backend_for
from ban_tui.tables import HOST_COLUMNS, host_rows
from ban_tui.widgets.rows import RowsTable
from engine import spec

REFRESH_SECONDS = 15.0


class HostsTable(RowsTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Follow its runs"),
        Binding("r", "refresh_hosts", "Refresh"),
    ]

    def __init__(self, **kwargs):
        super().__init__(HOST_COLUMNS, **kwargs)

    def action_refresh_hosts(self) -> None:
        self.parent.refresh_hosts()


class HostsPane(Vertical):
    DEFAULT_CSS = "HostsPane HostsTable { height: 1fr; } HostsPane #hosts-title { padding: 0 1; color: $text-muted; }"

    def __init__(self, config_path: Path, **kwargs):
        super().__init__(**kwargs)
        self.config_path = Path(config_path)
        self.known: dict[str, spec.Host] = {}
        self.statuses: dict[str, HostStatus] = {}

    def compose(self) -> ComposeResult:
        yield Label(f"hosts of {self.config_path} and {hosts.user_hosts_path()}  (enter follows a "
                    "host's running runs, r refreshes)", id="hosts-title")
        yield HostsTable(id="hosts-table")

    def on_mount(self) -> None:
        self.timer = self.set_interval(REFRESH_SECONDS, self.refresh_hosts, pause=True)

    def on_show(self) -> None:   # ask the boxes only while the panel is shown
        self.refresh_hosts()
        self.timer.resume()

    def on_hide(self) -> None:
        self.timer.pause()

    def load_hosts(self) -> tuple[dict[str, spec.Host], str]:
        """(hosts, a problem to show): the config's hosts win; a broken config leaves the user's."""
        try:
            config = spec.load(self.config_path) if self.config_path.exists() else None
        except spec.SpecError as exc:
            config, problem = None, f"{exc.problems[0]} (showing the user hosts only)"
        else:
            problem = ""
        try:
            return hosts.ssh_hosts(hosts.all_hosts(config)), problem
        except spec.SpecError as exc:
            return (config.hosts if config else {}), str(exc.problems[0])

    @work(thread=True, exclusive=True, group="hosts")
    def refresh_hosts(self) -> None:
        known, problem = self.load_hosts()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = dict(zip(known, pool.map(lambda h: backend_for(h).status(), known.values())))
        self.app.call_from_thread(self.show, known, statuses, problem)

    def show(self, known: dict, statuses: dict, problem: str = "") -> None:
        self.known, self.statuses = known, statuses
        keys, rows = [], []
        for name, host in known.items():
            for i, row in enumerate(host_rows(host, statuses[name])):
                keys.append(f"{name}#{i}")
                rows.append(row)
        self.query_one(HostsTable).show(rows, keys)
        if problem:
            self.app.notify(problem, severity="error")
        elif not known:
            self.app.notify(f"no hosts: add [hosts.NAME] tables to {self.config_path} or "
                            f"{hosts.user_hosts_path()}", severity="warning")

    @on(DataTable.RowSelected)
    def follow_runs(self, event: DataTable.RowSelected) -> None:
        """Follow the selected host's running runs in the runs panel (over ssh, in a thread)."""
        name = event.row_key.value.split("#")[0]
        status = self.statuses.get(name)
        if status is None or not status.runs:
            self.app.notify(f"nothing runs on {name}", severity="warning")
            return
        for run in status.runs:
            # its backend's source: a queued run's, a Slurm job's, as `ban follow --host` follows it
            self.app.watcher.add(Path(run.dir), backend_for(self.known[name]).source(run.dir).start())
            self.app.notify(f"following {run.name} on {name}")
        self.app.show_panel("runs")
