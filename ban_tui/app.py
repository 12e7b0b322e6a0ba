"""`ban-tui [CONFIG] [--runs-dir DIR]`: the terminal experiment manager (Textual).

A thread worker (ban_tui.watch.Watcher) follows every run of the runs directory and posts typed
messages (ban_tui.messages); the app collects which runs changed and, on a timer (at most
1 / FLUSH_SECONDS times a second), sets its `runs` reactive to a ban_tui.watch.RunsUpdate. Every
view of runs (the runs panel, the run monitor, the comparison) watches that one attribute with
`self.watch(self.app, "runs", self.show_runs, init=False)` and draws what it needs from it; the
app knows no view's type. The panels of the main screen are declared in ban_tui.screens.main.
Runs are launched detached (ban_tui.launch): quitting leaves them running, and reopening follows
every run again from the start of its events.
Never imports torch. What is not drawn in the first frame (ssh, the other tabs, the monitor) is
imported where it is first used: imports are half of the start-up time.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Provider
from textual.reactive import reactive
from textual.worker import get_current_worker

from engine.runs import default_runs_dir
from ban_tui import hosts, launch
from ban_tui.backends import backend_for
from ban_tui.backends.base import FAILURES
from ban_tui.config_edit import experiment_names
from ban_tui.messages import ConfigChanged, RunAdded, RunEvents, RunStderr
from ban_tui.screens.confirm import YES_NO, Confirm
from ban_tui.screens.experiments import SAVE_DISCARD_CANCEL, ExperimentsPane
from ban_tui.screens.main import PANELS, MainScreen
from ban_tui.watch import POLL_SECONDS, RunsUpdate, Watcher
from engine import spec

FLUSH_SECONDS = 0.1      # redraws are batched: at most ten a second
MOUNT_WAIT_SECONDS = 30.0  # the most a quit waits for widgets still mounting (see _shutdown)
STATUS_SECONDS = 1.0     # statuses also change with time and processes (stale, dead): recheck


class BanCommands(Provider):
    """Command palette: launch an experiment, open a run, and the app's actions."""

    def commands(self) -> list[tuple[str, object, str]]:
        app = self.app
        found = [("Save config", app.save_config, "write the edited chain to the config file"),
                 ("Reload config", app.reload_config, "read the config file again (drops unsaved edits)"),
                 ("Compare marked runs", app.compare_marked, "the marked runs side by side")]
        found += [(f"Show {p.title.lower()}", lambda p=p: app.show_panel(p.id), f"switch to the {p.title} tab")
                  for p in PANELS]
        found += [(f"Launch {name}", lambda n=name: app.launch_experiment(n), "start it detached, one run per seed")
                  for name in app.experiment_names()]
        with app.watcher.lock:
            runs = [(d, m.state) for d, m in app.watcher.models.items()]
        found += [(f"Open run {s.experiment or d.parent.name}/{s.run_id or d.name}",
                   lambda d=d: app.open_run(str(d)), "the run monitor") for d, s in runs]
        return found

    async def search(self, query: str):
        matcher = self.matcher(query)
        for name, callback, help_text in self.commands():
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)

    async def discover(self):
        for name, callback, help_text in self.commands():
            yield DiscoveryHit(name, callback, help=help_text)


class BanApp(App):
    # the followed runs as of the last redraw tick; views watch it (see the module docstring)
    runs: reactive[RunsUpdate | None] = reactive(None, always_update=True, init=False, repaint=False)

    CSS_PATH = Path(__file__).with_name("app.tcss")   # absolute: subclasses live elsewhere
    TITLE = "ban"
    COMMANDS = App.COMMANDS | {BanCommands}
    # number keys switch tabs too; the run monitor (a screen pushed over this one) uses its own
    BINDINGS = [Binding(p.key, f"show_panel({p.id!r})", p.title) for p in PANELS] + [
        Binding(str(i), f"show_panel({p.id!r})", p.title, show=False) for i, p in enumerate(PANELS, 1)] + [
        Binding("question_mark", "toggle_keys", "Keys"),
        Binding("ctrl+q", "request_quit", "Quit", priority=True),
    ]

    def __init__(self, config_path: Path | str = "experiments.toml", runs_dir: Path | str | None = None,
                 poll_interval: float = POLL_SECONDS, initial: str = "experiments"):
        super().__init__()
        self.config_path = Path(config_path)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir(None, self.config_path)
        self.watcher = Watcher(self.runs_dir, self.post_message, poll_interval)
        self.initial = initial
        self.dirty: set[Path] = set()          # runs changed since the last tick
        self.user_hosts = user_host_names()   # a config's `host` may name one of these too
        self._next_status = 0.0
        self.sub_title = str(self.config_path)

    def get_default_screen(self) -> MainScreen:
        return MainScreen(self.initial)

    def on_mount(self) -> None:
        self.follow_runs()
        self.set_interval(FLUSH_SECONDS, self.flush)

    def on_unmount(self) -> None:
        self.watcher.close()

    async def _shutdown(self) -> None:
        """Closing: let widgets still being mounted finish first. The panels built after the
        first frame may be mid-mount when the app quits at once, and a Select torn down mid-mount
        queries a child already removed and fails the exit. The wait ends when they are mounted
        (milliseconds on an idle machine); the bound only keeps a wedged mount from holding the
        exit forever. It was 1 s, and on a loaded 2-core machine (load average 15) the form took
        longer: the quit test failed one run in two."""
        deadline = time.monotonic() + MOUNT_WAIT_SECONDS
        while time.monotonic() < deadline and any(not w.is_mounted for s in self.screen_stack
                                                  for w in s.walk_children()):
            await asyncio.sleep(0.01)
        await super()._shutdown()

    @work(thread=True, exclusive=True, group="watch")
    def follow_runs(self) -> None:
        worker = get_current_worker()
        self.watcher.run(lambda: worker.is_cancelled)

    # ---- messages from the watcher: note what changed, draw on the next flush ----
    def on_run_added(self, message: RunAdded) -> None:
        self.dirty.add(message.run_dir)

    def on_run_events(self, message: RunEvents) -> None:
        self.dirty.add(message.run_dir)

    def on_run_stderr(self, message: RunStderr) -> None:
        self.dirty.add(message.run_dir)

    def on_config_changed(self, message: ConfigChanged) -> None:
        n = len(message.problems)
        self.sub_title = f"{self.config_path}" + (" (unsaved)" if message.dirty else "") + \
            (f" - {n} problem{'s' * (n != 1)}" if n else "")

    def refresh_run(self, run_dir) -> None:
        """Draw this run again on the next tick (a view just mounted calls it for its runs)."""
        self.dirty.add(Path(run_dir))

    def refresh_all(self) -> None:
        """Draw every run again on the next tick (a view of all runs calls it when mounted)."""
        self._next_status = 0.0

    def flush(self) -> None:
        """Hand the views what changed since the last tick (every run once per STATUS_SECONDS):
        setting `runs` calls each view's watcher now, in this thread, under the watcher's lock."""
        if self._exit or not self._running:   # closing: the screens are being taken down
            return
        now = time.time()
        tick = now >= self._next_status
        if not self.dirty and not tick:
            return
        if tick:
            self._next_status = now + STATUS_SECONDS
        changed, self.dirty = None if tick else frozenset(self.dirty), set()
        with self.watcher.lock:
            self.runs = RunsUpdate(self.watcher.models, changed, now)

    # ---- the main screen's panels ----
    @property
    def main_screen(self) -> MainScreen:
        return next(s for s in self.screen_stack if isinstance(s, MainScreen))

    def action_show_panel(self, panel: str) -> None:
        self.show_panel(panel)

    def show_panel(self, panel: str) -> None:
        while not isinstance(self.screen, MainScreen):
            self.pop_screen()
        self.main_screen.activate(panel)

    @property
    def experiments(self) -> ExperimentsPane | None:
        """The experiments tab; None for the moment after the first frame when another tab was
        shown first (ban_tui.screens.main builds hidden tabs after it)."""
        found = self.main_screen.query(ExperimentsPane)
        return found.first() if found else None

    def experiment_names(self) -> list[str]:
        pane = self.experiments
        return experiment_names(pane.doc()) if pane else []

    def save_config(self) -> None:
        if (pane := self.experiments) is not None:
            pane.save()

    def reload_config(self) -> None:
        if (pane := self.experiments) is not None:
            pane.reload()

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """The palette's screenshot: an SVG into screenshots/ beside the config file (Textual's
        default, ~/Downloads, need not exist: the save failed there); the toast says where."""
        if path is None:
            folder = self.config_path.resolve().parent / "screenshots"
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.notify(f"screenshot not saved: {exc}", severity="error")
                return None
            path = str(folder)
        return super().deliver_screenshot(filename, path, time_format)

    def action_toggle_keys(self) -> None:
        """`?`: the keys of what has focus and of the screen (Textual's help panel), or hide it."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_request_quit(self) -> None:
        """Quit; with unsaved edits to the config, ask first (save, discard, or stay)."""
        pane = self.experiments
        if pane is not None and pane._pending is not None:   # edits typed just now count
            pane._validate()
        if pane is None or not pane.dirty:
            self.exit()
            return

        def answered(answer: str | None) -> None:
            if answer == "d" or (answer == "s" and pane.save()):
                self.exit()
        self.push_screen(Confirm(f"{self.config_path} has unsaved edits. Quit?", SAVE_DISCARD_CANCEL), answered)

    # ---- runs: open, compare, launch, cancel, resume, delete, export ----
    def open_run(self, run_dir: str) -> None:
        from ban_tui.screens.monitor import RunMonitor   # plotext is imported only here (first frame)
        self.push_screen(RunMonitor(Path(run_dir)))

    def compare_runs(self, run_dirs: list[str]) -> None:
        from ban_tui.screens.compare import CompareScreen
        self.push_screen(CompareScreen([Path(d) for d in run_dirs]))

    def confirm_cancel(self, run_dir: str) -> None:
        """x: cancel a run, once the user said yes."""
        name = "/".join(Path(run_dir).parts[-2:])
        self.push_screen(Confirm(f"Cancel run {name}? (r resumes it later from its last checkpoint)", YES_NO),
                         lambda answer: answer == "y" and self.cancel_run(run_dir))

    def confirm_delete(self, run_dir: str) -> None:
        """d: delete a run's directory, once the user said yes, through its backend's rm (as `ban
        rm`): a queued run leaves the queue, a live one is refused."""
        model = self.watcher.models.get(Path(run_dir))
        status = model.status() if model is not None else "ok"
        if status == "running":
            self.notify("not deleted: the run is running; cancel it first (x)", severity="error")
            return
        name = "/".join(Path(run_dir).parts[-2:])
        self.push_screen(Confirm(f"Delete run {name} ({status}) and every file in it?", YES_NO),
                         lambda answer: answer == "y" and self.control("rm", run_dir))

    def export_figure(self, run_dir: Path) -> None:
        """e in the monitor: the run's figure (as `ban plot`) into <run>/figures/, and where it went."""
        from ban_tui import plot
        try:
            out = plot.save([Path(run_dir)], plot.run_figure_path(Path(run_dir)))
        except (OSError, ValueError) as exc:   # plot.PlotError: matplotlib missing says how to install
            self.notify(f"figure not written: {exc}", severity="error")
        else:
            self.notify(f"figure written to {out}", timeout=10)

    def compare_marked(self) -> None:
        from ban_tui.screens.runs import RunsTable
        for table in self.main_screen.query(RunsTable):   # none for the moment before the runs tab is built
            table.action_compare()

    def launch_experiment(self, name: str) -> list[launch.Launch]:
        """Start one detached engine per seed of a saved experiment, here or on its `host`
        (over ssh, in a worker); follow them at once."""
        try:
            config = spec.load(self.config_path, extra_hosts=self.user_hosts)
            exp = config.experiments[name]
            known = hosts.all_hosts(config)   # [hosts.local]: this machine's slots, where a table gives them
            b = backend_for(known[exp.host] if exp.host else known.get("local"), self.runs_dir)
        except spec.SpecError as exc:
            self.notify(f"not launched: {exc.problems[0]}", severity="error")
            return []
        except KeyError:
            self.notify(f"not launched: no experiment {name!r} in {self.config_path} (save it first)", severity="error")
            return []
        if b.remote:
            self.launch_remote(exp, b)
            return []
        launched = []
        for seed in exp.seeds:
            try:
                [run] = b.submit([(exp, seed)], self.config_path)
            except FAILURES as exc:
                self.notify(f"not launched: {name} seed {seed}: {exc}", severity="error")
                continue
            self.watcher.add(run.run_dir, b.source(run.run_dir, run.pid, run.pid_start))
            self.notify(f"launched {run.name} ({run.how})")
            launched.append(run)
        if launched:
            self.show_panel("runs")
        return launched

    @work(thread=True, group="launch")
    def launch_remote(self, exp: spec.Experiment, b) -> None:
        """A submit on a host waits for the engine's first event: never in the UI thread. A
        backend that takes every chain at once (Slurm: one job array) gets every seed, as `ban
        run` submits them."""
        batches = [[(exp, seed) for seed in exp.seeds]] if b.batched else [[(exp, seed)] for seed in exp.seeds]
        for chains in batches:
            what = f"{exp.name} seed {chains[0][1]}" if len(chains) == 1 else f"{exp.name} ({len(chains)} seeds)"
            self.call_from_thread(self.notify, f"starting {what} on {b.name}...")
            try:
                runs = b.submit(chains, self.config_path)   # on the host's slots (maybe queued), or its Slurm
            except FAILURES as exc:
                self.call_from_thread(self.notify, f"not launched: {what}: {exc}", severity="error")
                continue
            for run in runs:
                self.watcher.add(Path(run.run_dir), b.source(run.run_dir, run.pid).start())
                said = (f"submitted {run.name} as {run.how} on {b.name}" if run.job is not None
                        else f"launched {run.name} on {b.name} ({run.how})")
                self.call_from_thread(self.notify, said)
            self.call_from_thread(self.show_panel, "runs")

    def backend_of(self, run_dir: str):
        """The backend of a followed run: its source's host's (ban_tui.backends.backend_for), this
        machine's runs directory for a run here."""
        model = self.watcher.models.get(Path(run_dir))
        return backend_for(model.source.host if model is not None else None, self.runs_dir)

    def control(self, verb: str, run_dir: str) -> None:
        """cancel / resume / rm a run through its backend, as the CLI does: here at once, on a host
        in a worker (over ssh, never in the UI thread)."""
        b = self.backend_of(run_dir)
        if b.remote:
            self.notify(f"{verb}: {'/'.join(str(run_dir).rstrip('/').split('/')[-2:])} on {b.name}...")
            self.control_remote(verb, run_dir, b)
            return
        try:
            said = self.do(verb, run_dir, b)
        except FAILURES as exc:
            self.refused(verb, exc)
            return
        self.done(verb, run_dir, said)

    @work(thread=True, group="control")
    def control_remote(self, verb: str, run_dir: str, b) -> None:
        try:
            said = self.do(verb, run_dir, b)
        except FAILURES as exc:
            self.call_from_thread(self.refused, verb, exc)
            return
        self.call_from_thread(self.done, verb, run_dir, said)

    def refused(self, verb: str, exc: Exception) -> None:
        self.notify(f"not deleted: {exc}" if verb == "rm" else str(exc), severity="error")

    def done(self, verb: str, run_dir: str, said: str) -> None:
        if verb == "rm":   # gone from every view
            self.watcher.forget(Path(run_dir))
            self.refresh_run(run_dir)
        self.notify(said)

    def do(self, verb: str, run_dir: str, b) -> str:
        """The verb through the backend (a resumed run is followed again from its new engine)."""
        model = self.watcher.models.get(Path(run_dir))
        ref = model.source.run_dir if model is not None else run_dir
        if verb == "cancel":
            return b.cancel(ref, wait=False)
        if verb == "rm":
            return b.rm(ref)
        run = b.resume(ref)
        source = b.source(run.run_dir, run.pid, run.pid_start)
        self.watcher.add(Path(run_dir), source.start() if b.remote else source)
        return f"resumed {run.name}" + (f" on {b.name}" if b.remote else "") + f" ({run.how})"

    def cancel_run(self, run_dir: str) -> None:
        self.control("cancel", run_dir)

    def resume_run(self, run_dir: str) -> None:
        self.control("resume", run_dir)


def user_host_names() -> list[str]:
    """Hosts of the user's hosts file, which a config's `host` may name (a broken file: none;
    the hosts tab says what is wrong with it)."""
    try:
        return list(hosts.load_user_hosts())
    except spec.SpecError:
        return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ban-tui", description="Define, launch and follow Born-Again Network chains.")
    parser.add_argument("config", nargs="?", default="experiments.toml", help="the config file (default ./experiments.toml)")
    parser.add_argument("--runs-dir", default=None, help="runs directory (default: $BAN_RUNS_DIR, the config's runs_dir, or ./runs)")
    args = parser.parse_args(argv)
    BanApp(args.config, args.runs_dir).run()


if __name__ == "__main__":
    main()
