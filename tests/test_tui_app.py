"""The ban-tui app driven through Textual's pilot on recorded runs: runs view, run monitor,
marks for failed / cancelled / dead / stale runs, compare, command palette, live updates."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ban_tui.app import BanApp
from ban_tui.messages import RunEvents
from ban_tui.screens.compare import CompareScreen
from ban_tui.screens.monitor import RunMonitor
from ban_tui.screens.runs import RunsTable
from ban_tui.tables import delta_rows, ensemble_rows, gen_rows
from ban_tui.watch import CURVE_CAP, DIAGNOSTIC_CAP, STDERR_CAP, RunModel
from ban_tui.widgets.curves import CurvePlot
from ban_tui.widgets.diagnostics import DiagnosticsRow
from ban_tui.widgets.rows import RowsTable
from engine.events import EventWriter, read_events
from engine.runs import load_state
from test_tui_support import CANCELLED, CONFIG, DEAD, FAILED, OK, STALE, cells, copy_runs, wait_for

ROOT = Path(__file__).resolve().parents[1]


class RecordingApp(BanApp):
    """The real app, also keeping the RunEvents messages it received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[RunEvents] = []

    def on_run_events(self, message: RunEvents) -> None:
        self.received.append(message)
        super().on_run_events(message)


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "experiments.toml"
    config.write_text(CONFIG)
    return config, copy_runs(tmp_path, stale=True)


async def monitor_shown(pilot, app, run_dir) -> RunMonitor:
    """Once the runs table lists the five recorded runs, open one's monitor; the monitor."""
    await wait_for(pilot, lambda: len(statuses(app)) == 5)
    app.open_run(str(run_dir.resolve()))
    return await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)


def statuses(app) -> dict[str, str]:
    table = app.main_screen.query_one(RunsTable)
    col = [k for k, _ in table.spec].index("status")
    return {Path(key).parent.name + "/" + Path(key).name: row[col].split()[-1]
            for key, row in zip(table.row_keys(), cells(table))}


async def test_runs_view_lists_every_run_with_its_status(setup):
    config, runs = setup
    app = RecordingApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(120, 40)) as pilot:
        expected = {OK: "ok", CANCELLED: "cancelled", FAILED: "failed", DEAD: "dead", STALE: "stale"}

        def received() -> set[str]:
            return {Path(m.run_dir).name for m in app.received}
        # The table (RunsUpdate) and the RunEvents messages arrive separately, and a loaded machine
        # may draw a row before its events are folded: wait for both, then say what differs.
        try:
            await wait_for(pilot, lambda: statuses(app) == expected and received() == {Path(r).name for r in expected}, 30)
        except AssertionError:
            assert statuses(app) == expected
            assert received() == {Path(r).name for r in expected}


async def test_monitor_shows_the_whole_history_of_a_finished_run(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(120, 44)) as pilot:
        screen = await monitor_shown(pilot, app, runs / OK)
        state = load_state(runs / OK)
        gens = screen.query_one("#gens", RowsTable)
        expected = [[r[k] for k, _ in gens.spec] for r in gen_rows(state)]
        assert await wait_for(pilot, lambda: cells(gens) == expected)
        assert [row[0] for row in expected] == ["Teacher", "BAN-1", "BAN-2"]
        ens = screen.query_one("#ensembles", RowsTable)
        assert cells(ens) == [[r[k] for k, _ in ens.spec] for r in ensemble_rows(state)]
        assert cells(ens)[0][0] == "Ens*2" and cells(ens)[0][-1][:1] in ("+", "-")   # points against the teacher
        # curves: every generation, train and test, one point per epoch
        error = screen.query_one("#error", CurvePlot)
        assert error.plotted == {f"{g} {k}": 2 for g in ("Teacher", "BAN-1", "BAN-2") for k in ("train_err", "test_err")}
        diag = [row for row in screen.query(DiagnosticsRow) if row.gen is not None]
        assert [row.gen for row in diag] == [0, 1, 2]
        status = str(screen.query_one("#status").render())
        assert "OK" in status and OK.split("/")[1] in status


@pytest.mark.parametrize("run, mark, why", [
    (FAILED, "FAILED", "expected an .npz file"),
    (CANCELLED, "CANCELLED", "r resumes"),
    (DEAD, "DEAD", "process is gone"),
    (STALE, "STALE", "not known to be alive"),
])
async def test_failed_cancelled_dead_and_stale_runs_are_marked(setup, run, mark, why):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await monitor_shown(pilot, app, runs / run)
        text = await wait_for(pilot, lambda: mark in str(screen.query_one("#status").render())
                              and str(screen.query_one("#status").render()))
        assert why in text
        if run == FAILED:   # the engine's stderr tail is shown
            assert await wait_for(pilot, lambda: any("no such file" in line for line in screen.query_one("#stderr").lines))


async def test_keyboard_open_compare_and_back(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("f3")
        table = app.main_screen.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 5)
        assert app.focused is table
        await pilot.press("space", "down", "space", "c")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.is_mounted and app.screen)
        assert len(screen.run_dirs) == 2
        deltas = screen.query_one("#deltas", RowsTable)
        expected = [[r[k] for k, _ in deltas.spec] for r in delta_rows([load_state(d) for d in screen.run_dirs])]
        assert await wait_for(pilot, lambda: cells(deltas) == expected)
        assert [row[0] for row in expected][:3] == ["Teacher", "BAN-1", "BAN-2"]
        await pilot.press("escape", "enter")
        assert await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor))
        await pilot.press("escape")
        assert app.screen is app.main_screen


async def test_command_palette_opens_a_run(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.watcher.models) == 5)
        await pilot.press("ctrl+p")
        await pilot.press(*"open run 0k01")
        await pilot.pause(0.5)
        await pilot.press("enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)
        assert screen.run_dir.name == OK.split("/")[1]


WRITER = textwrap.dedent("""
    import os, sys, time
    from engine.events import EventWriter
    w = EventWriter(sys.argv[1], "live")
    w.emit("run_start", experiment="tiny", pid=None, seed=0, device="cpu")
    w.emit("gen_start", gen=0, role="teacher", objective="ce", model="cnn-small", epochs=40)
    while not os.path.exists(sys.argv[2]):   # the test saw the run start
        time.sleep(0.02)
    for epoch in range(1, 41):
        w.emit("epoch", gen=0, epoch=epoch, epochs=40, train_loss=1.0 / epoch, test_err=0.5 / epoch,
               diagnostics={"grad_correct": 0.1, "grad_dark": 0.2})
        time.sleep(0.02)
    w.emit("run_end", status="ok")
    w.close()
""")


async def test_a_new_run_appears_and_updates_live(setup, tmp_path):
    config, runs = setup
    app = RecordingApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(statuses(app)) == 5)
        live = runs / "tiny" / "20251130-000000-s0-live"
        live.mkdir(parents=True)
        go = tmp_path / "go"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live / "events.jsonl"), str(go)], cwd=ROOT)
        try:
            assert await wait_for(pilot, lambda: statuses(app).get("tiny/20251130-000000-s0-live") == "running", 30)
            go.touch()
            assert await wait_for(pilot, lambda: statuses(app)["tiny/20251130-000000-s0-live"] == "ok", 30)
        finally:
            writer.wait(30)
        table = app.main_screen.query_one(RunsTable)
        row = dict(zip([k for k, _ in table.spec], cells(table)[table.row_keys().index(str(live.resolve()))]))
        assert row["progress"] == "40/40"
        # the events came in several batches, each a typed message naming the run
        batches = [m for m in app.received if m.run_dir == live.resolve()]
        assert len(batches) >= 2 and sum(len(m.events) for m in batches) == 43


def test_series_and_logs_are_capped(tmp_path):
    run = tmp_path / "runs" / "x" / "r"
    run.mkdir(parents=True)
    w = EventWriter(run / "events.jsonl", "r")
    n = max(CURVE_CAP, DIAGNOSTIC_CAP) + 50
    for epoch in range(1, n + 1):
        w.emit("epoch", gen=1, epoch=epoch, epochs=n, train_loss=1.0, test_err=0.1,
               diagnostics={"grad_correct": 0.1, "grad_dark": 0.2})
    w.close()
    (run / "stderr.log").write_text("".join(f"line {i}\n" for i in range(STDERR_CAP + 50)))
    from ban_tui.follow import LocalSource
    model = RunModel(run, LocalSource(run))
    model.poll()
    model.poll_stderr()
    assert len(model.curves["train_loss"][1]) == CURVE_CAP and model.curves["train_loss"][1][-1][0] == n
    assert len(model.diagnostics[1]["grad_dark"]) == DIAGNOSTIC_CAP
    assert len(model.stderr) == STDERR_CAP and model.stderr[-1] == f"line {STDERR_CAP + 49}"
    assert model.state.gens[1].epoch == n


def test_a_resumed_generation_replaces_its_repeated_epochs(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    w = EventWriter(run / "events.jsonl", "r")
    for epoch in (1, 2, 3, 2, 3, 4):     # killed after epoch 3, resumed from the epoch-1 checkpoint
        w.emit("epoch", gen=0, epoch=epoch, epochs=4, train_loss=float(epoch), test_err=0.1)
    w.close()
    from ban_tui.follow import LocalSource
    model = RunModel(run, LocalSource(run))
    model.poll()
    assert [x for x, _ in model.curves["train_loss"][0]] == [1, 2, 3, 4]


def test_the_app_never_imports_torch():
    code = "import sys, ban_tui.app, ban_tui.watch, ban_tui.config_edit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


async def test_a_view_of_runs_needs_only_a_watcher_of_app_runs(setup):
    """The extension point for new views: watch the app's `runs`; no change to the app."""
    from textual.screen import Screen

    class Recorder(Screen):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_mount(self) -> None:
            self.watch(self.app, "runs", lambda update: self.seen.append((update, set(update.models))),
                       init=False)

    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.watcher.models) == 5
                       and all(m.state.n_events for m in app.watcher.models.values()))
        screen = Recorder()
        await app.push_screen(screen)
        tick, followed = await wait_for(pilot, lambda: next((s for s in screen.seen if s[0].changed is None), None))
        assert followed == set(app.watcher.models) and all(tick.touches(d) for d in followed)  # every run, each second
        one, other = sorted(app.watcher.models)[:2]
        # every recorded event folded and drawn: what changes next is only what refresh_run names
        await wait_for(pilot, lambda: not app.dirty and all(
            m.state.last_seq == read_events(m.run_dir / "events.jsonl")[-1]["seq"] for m in app.watcher.models.values()))
        # The next flush hands the refresh over. When that flush is also the periodic tick, the tick's
        # update (every run) serves it and no update names it alone: the race that failed this test
        # about one run in six. Ask again until a flush that is not a tick names it.
        for attempt in range(20):
            start = len(screen.seen)
            app.refresh_run(one)
            update, _ = await wait_for(pilot, lambda: next(iter(screen.seen[start:]), None))
            assert update.touches(one)
            if update.changed is not None:
                break
        assert update.changed == {one} and update.touches(one) and not update.touches(other)
        assert not update.touches(runs / "nowhere")
