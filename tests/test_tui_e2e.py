"""End to end with the real engine: define a tiny digits chain in the form, save and launch it,
quit while it runs (it keeps running, detached), reopen, cancel and resume it from the keyboard,
watch it fill in until it finishes, and reopen once more to see its whole history."""
from __future__ import annotations

import os
import pytest
import signal

from ban_tui.app import BanApp
from ban_tui.screens.confirm import Confirm
from ban_tui.screens.monitor import RunMonitor
from ban_tui.screens.runs import RunsTable
from ban_tui.tables import ensemble_rows, gen_rows
from ban_tui.widgets.curves import CurvePlot
from ban_tui.widgets.rows import RowsTable
from engine import spec
from engine.runs import load_state, pid_alive
from test_tui_form import type_into
from helpers import hold
from test_tui_support import CONFIG, built, cells, wait_for

DEADLINE = 240   # seconds for the whole tiny chain on a busy 2-core machine


async def test_define_launch_quit_reopen_and_follow_to_the_end(tmp_path):
    config = tmp_path / "experiments.toml"
    config.write_text(CONFIG)
    runs = tmp_path / "runs"
    gate = hold(runs / "e2e")   # held after each epoch until cancelled: running when x is pressed, on any CPU
    app = BanApp(config, runs, poll_interval=0.1)
    engines = []   # (pid, pid start) of what the app launched, to clean up if the test fails
    try:
        async with app.run_test(size=(140, 50)) as pilot:
            await built(pilot)
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: app.experiments.draft.source is None and app.query("#model-1"))
            await type_into(pilot, "#name", "e2e")
            await type_into(pilot, "#epochs", "10")
            await type_into(pilot, "#batch_size", "32")
            await type_into(pilot, "#ensembles", "1")
            await wait_for(pilot, lambda: "✓ valid" in str(app.experiments.query_one("#problems").render()))
            await pilot.press("ctrl+r")                       # saves, then launches one run per seed
            model = await wait_for(pilot, lambda: next(iter(app.watcher.models.values()), None))
            source = model.source                             # a LocalSource following the launched pid
            engines.append((source.pid, source.pid_start))
            assert spec.load(config).experiments["e2e"].generations[1].objective == "ban"
            assert model.run_dir.parent == (runs / "e2e").resolve()
            await pilot.press("enter")                        # the runs tab has focus: open the run
            screen = await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)
            assert screen.run_dir == model.run_dir
            await wait_for(pilot, lambda: "RUNNING" in str(screen.query_one("#status").render()) and model.state.pid,
                           DEADLINE)                          # the engine said hello (run_start)
        # the TUI is gone; the engine is not
        assert pid_alive(source.pid, source.pid_start)
        # reopen: attach to the running run, cancel it (x: SIGTERM), resume it (r)
        app = BanApp(config, runs, poll_interval=0.1, initial="runs")
        async with app.run_test(size=(140, 50)) as pilot:
            table = app.main_screen.query_one(RunsTable)
            await wait_for(pilot, lambda: table.row_count == 1 and app.focused is table)
            await pilot.press("enter")
            screen = await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)
            followed = app.watcher.models[screen.run_dir]
            gens = screen.query_one("#gens", RowsTable)
            await wait_for(pilot, lambda: gens.row_count >= 1, DEADLINE)          # the teacher started
            rows_at_cancel = gens.row_count   # 1: held in the teacher
            await pilot.press("x")                            # cancel asks first (issue 17)
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await wait_for(pilot, lambda: "CANCELLED" in str(screen.query_one("#status").render()), DEADLINE)
            assert followed.state.end["status"] == "cancelled"
            await wait_for(pilot, lambda: not pid_alive(source.pid, source.pid_start), 60)   # it exited
            gate.unlink()
            await pilot.press("r")
            await wait_for(pilot, lambda: followed.state.pid not in (None, source.pid), DEADLINE)  # resumed
            engines.append((followed.state.pid, followed.state.pid_start))
            ens = screen.query_one("#ensembles", RowsTable)
            seen_rows = {rows_at_cancel}   # the generation table fills in as generations start

            def finished():
                seen_rows.add(gens.row_count)
                with app.watcher.lock:
                    return app.watcher.models[screen.run_dir].status() == "ok" and ens.row_count == 1

            await wait_for(pilot, finished, DEADLINE)
            await pilot.pause(0.3)
            state = load_state(model.run_dir)
            assert cells(gens) == [[r[k] for k, _ in gens.spec] for r in gen_rows(state)]
            assert [row[0] for row in cells(gens)] == ["Teacher", "BAN-1"] and {rows_at_cancel, 2} <= seen_rows
            assert cells(ens) == [[r[k] for k, _ in ens.spec] for r in ensemble_rows(state)]
            assert screen.query_one("#error", CurvePlot).plotted["BAN-1 test_err"] == 10   # one point per epoch
            assert "OK" in str(screen.query_one("#status").render())
        # quit and reopen once more: the finished run shows its whole history
        app = BanApp(config, runs, poll_interval=0.1, initial="runs")
        async with app.run_test(size=(140, 50)) as pilot:
            await wait_for(pilot, lambda: len(app.watcher.models) == 1)
            app.open_run(str(model.run_dir))
            screen = await wait_for(pilot, lambda: isinstance(app.screen, RunMonitor) and app.screen.is_mounted and app.screen)
            gens = screen.query_one("#gens", RowsTable)
            assert await wait_for(pilot, lambda: cells(gens) == [[r[k] for k, _ in gens.spec] for r in gen_rows(state)])
    finally:
        for pid, start in engines:
            if pid_alive(pid, start):
                os.killpg(pid, signal.SIGKILL)
