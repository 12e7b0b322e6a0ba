"""Snapshots of the main screens built from the recorded runs (pytest-textual-snapshot).

Deterministic: fixed timestamps in the recordings, UTC clock, relative paths, no live run.
Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the SVGs under tests/__snapshots__/.
"""
from __future__ import annotations

import time

import pytest

from ban_tui.app import BanApp
from ban_tui.screens.monitor import RunMonitor
from test_tui_support import CONFIG, FAILED, OK, copy_runs, wait_for

SIZE = (120, 40)


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments.toml").write_text(CONFIG)
    copy_runs(tmp_path)
    yield tmp_path
    monkeypatch.undo()
    time.tzset()


def app_at(initial="experiments") -> BanApp:
    return BanApp("experiments.toml", "runs", poll_interval=0.05, initial=initial)


async def all_runs_shown(pilot) -> None:
    def shown():
        tables = [t for s in pilot.app.screen_stack for t in s.query("#runs-table")]
        return tables and tables[0].row_count == 4
    await wait_for(pilot, shown)
    await pilot.pause(0.3)


def monitor_of(run):
    async def run_before(pilot) -> None:
        await all_runs_shown(pilot)
        pilot.app.open_run(str((pilot.app.runs_dir / run).resolve()))
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunMonitor) and pilot.app.screen.ready)
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#gens").row_count > 0 or run == FAILED)
        await pilot.pause(0.5)
    return run_before


def test_experiments_view(here, snap_compare):
    assert snap_compare(app_at(), terminal_size=SIZE)


def test_runs_view(here, snap_compare):
    assert snap_compare(app_at("runs"), terminal_size=SIZE, run_before=all_runs_shown)


def test_monitor_of_a_finished_run(here, snap_compare):
    assert snap_compare(app_at("runs"), terminal_size=SIZE, run_before=monitor_of(OK))


def test_monitor_of_a_failed_run(here, snap_compare):
    assert snap_compare(app_at("runs"), terminal_size=SIZE, run_before=monitor_of(FAILED))
