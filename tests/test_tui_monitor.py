"""The run monitor driven through the pilot on recorded runs: the whole chain on one axis with
its generation boundaries, errors in %, integer ticks, log scale, hiding generations, the
per-epoch table, whole-chain progress and ETA, the stderr panel hidden while empty."""
from __future__ import annotations

import pytest

from ban_tui.app import BanApp
from ban_tui.screens.confirm import Confirm
from ban_tui.screens.monitor import RunMonitor
from ban_tui.widgets.curves import CurvePlot, gen_offsets
from ban_tui.widgets.rows import RowsTable
from engine.runs import load_state
from test_tui_support import CONFIG, FAILED, OK, cells, copy_runs, wait_for


@pytest.fixture
def app(tmp_path):
    config = tmp_path / "experiments.toml"
    config.write_text(CONFIG)
    runs = copy_runs(tmp_path, stale=True)
    return BanApp(config, runs, poll_interval=0.05, initial="runs"), runs


async def open_monitor(pilot, app, run_dir):
    await wait_for(pilot, lambda: len(app.watcher.models) == 5)
    app.open_run(str(run_dir.resolve()))
    screen = await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)
    await wait_for(pilot, lambda: screen.query_one("#error", CurvePlot).plotted)
    return screen


def test_generations_follow_each_other_on_the_chain_axis(tmp_path):
    state = load_state(copy_runs(tmp_path) / OK)
    assert gen_offsets(state.gens) == {0: 0, 1: 2, 2: 4}


async def test_monitor_curves_keys_and_epoch_table(app):
    app, runs = app
    async with app.run_test(size=(140, 48)) as pilot:
        screen = await open_monitor(pilot, app, runs / OK)
        error = screen.query_one("#error", CurvePlot)
        assert error.boundaries == {"BAN-1": 2, "BAN-2": 4}          # marked and labelled
        assert error.ticks == [0, 1, 2, 3, 4, 5, 6] and all(isinstance(t, int) for t in error.ticks)
        assert "%" in error.title and not error.log_scale
        status = str(screen.query_one("#status").render())
        assert "OK" in status and "chain 6/6 epochs" in status and "ETA 0:00:00" in status
        await pilot.press("l")
        assert error.log_scale and screen.query_one("#loss", CurvePlot).log_scale
        await pilot.press("1")                                          # hide BAN-1
        assert not any(k.startswith("BAN-1 ") for k in error.plotted)
        assert "Teacher test_err" in error.plotted and "BAN-2 test_err" in error.plotted
        await pilot.press("1")                                          # and show it again
        assert "BAN-1 test_err" in error.plotted
        await pilot.press("t")                                          # the per-epoch table
        table = screen.query_one("#epochs", RowsTable)
        rows = await wait_for(pilot, lambda: cells(table))
        assert len(rows) == 6 and table.display and not screen.query_one("#curves").display
        heads = [h for _, h in table.spec]
        assert {"lr", "seconds", "grad_correct", "test err"} <= set(heads)
        first = dict(zip(heads, rows[0]))
        assert first[""] == "Teacher" and first["epoch"] == "1" and first["test err"] == "25.63%"
        assert not screen.query_one("#stderr-box").display              # nothing on stderr: collapsed


async def test_stderr_panel_is_labelled_once_there_is_stderr(app):
    app, runs = app
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for(pilot, lambda: len(app.watcher.models) == 5)
        app.open_run(str((runs / FAILED).resolve()))
        screen = await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)
        box = screen.query_one("#stderr-box")
        await wait_for(pilot, lambda: box.display)
        assert "engine stderr" in str(screen.query_one("#stderr-title").render())


async def test_cancel_asks_first(app):
    app, runs = app
    async with app.run_test(size=(140, 48)) as pilot:
        screen = await open_monitor(pilot, app, runs / OK)
        cancelled = []
        app.cancel_run = cancelled.append
        await pilot.press("x")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        assert app.screen is screen and cancelled == []
        await pilot.press("x", "y")
        assert cancelled == [str((runs / OK).resolve())]


async def test_export_key_writes_the_figure_into_the_run_and_says_where(app):
    pytest.importorskip("matplotlib")
    app, runs = app
    async with app.run_test(size=(140, 48)) as pilot:
        screen = await open_monitor(pilot, app, runs / OK)
        out = screen.run_dir / "figures" / "chain.png"
        assert not out.exists()
        await pilot.press("e")
        said = await wait_for(pilot, lambda: [n.message for n in app._notifications if "figure" in n.message], 30)
        assert said == [f"figure written to {out}"]
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert [p.name for p in out.parent.iterdir()] == ["chain.png"]     # no temp file left behind
