"""Snapshots of the main screens built from the recorded runs (pytest-textual-snapshot).

Deterministic: fixed timestamps in the recordings, UTC clock, relative paths, no live run.
Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the SVGs under tests/__snapshots__/.

The runs table, a run's monitor and the comparison are held at the three sizes the layout must
work at: 160×48, 100×30 and 80×24.
"""
from __future__ import annotations

import time

import pytest
from rich.cells import cell_len

from ban_tui.app import BanApp
from ban_tui.screens.compare import CompareScreen
from ban_tui.screens.monitor import RunMonitor
from engine import spec
from engine.events import read_events
from engine.runs import load_state
from test_tui_support import CANCELLED, CONFIG, FAILED, OK, copy_runs, wait_for

SIZE = (120, 40)
SIZES = pytest.mark.parametrize("size", [(160, 48), (100, 30), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments.toml").write_text(CONFIG)
    runs = copy_runs(tmp_path)
    for run, lr in ((OK, 0.1), (CANCELLED, 0.05)):   # snapshots, so the comparison has a config diff
        exp = spec.loads(CONFIG.replace("epochs = 2", f"epochs = 2\noptimizer = {{ lr = {lr} }}")).experiments["tiny"]
        (runs / run / "experiment.toml").write_text(spec.dumps_experiment(exp))
    yield tmp_path
    monkeypatch.undo()
    time.tzset()


def app_at(initial="experiments") -> BanApp:
    return BanApp("experiments.toml", "runs", poll_interval=0.05, initial=initial)


def all_events_read(app) -> bool:
    """Every recorded event folded by the watcher (a busy machine can lag behind the first frame)."""
    with app.watcher.lock:
        models = list(app.watcher.models.values())
    return len(models) == 4 and all(m.state.last_seq == last_seq(m.run_dir) for m in models)


def last_seq(run_dir) -> int:
    return read_events(run_dir / "events.jsonl")[-1]["seq"]


async def all_runs_shown(pilot) -> None:
    def shown():
        tables = [t for s in pilot.app.screen_stack for t in s.query("#runs-table")]
        return (tables and tables[0].row_count == 4 and all_events_read(pilot.app)
                and columns_fit(tables[0]))
    await wait_for(pilot, shown)
    await pilot.pause(0.3)


def columns_fit(table) -> bool:
    """Every column as wide as its widest cell: the table measures new rows when the app is
    idle, so on a busy machine a screenshot right after the rows arrive can catch them cut."""
    rows = [table.get_row_at(i) for i in range(table.row_count)]
    return all(column.content_width >= max((cell_len(str(row[i])) for row in rows), default=0)
               for i, column in enumerate(table.ordered_columns))


def monitor_of(run):
    async def run_before(pilot) -> None:
        await all_runs_shown(pilot)
        pilot.app.open_run(str((pilot.app.runs_dir / run).resolve()))
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunMonitor) and pilot.app.screen.is_mounted)
        state = load_state(pilot.app.runs_dir / run)
        screen = pilot.app.screen
        # every panel filled in from the whole recording, then one more redraw tick
        await wait_for(pilot, lambda: screen.query_one("#gens").row_count == len(state.gens)
                       and screen.query_one("#ensembles").row_count == len(state.ensembles)
                       and state.status().upper() in str(screen.query_one("#status").render()))
        await pilot.pause(0.5)
    return run_before


async def validated(pilot) -> None:
    """The form's validation ran (it waits for a pause after mount)."""
    def done():
        panes = [p for s in pilot.app.screen_stack for p in s.query("#experiments-pane")]
        return panes and panes[0].form.is_mounted and panes[0]._pending is None and "valid" in str(
            panes[0].query_one("#problems").render())
    await wait_for(pilot, done)
    await pilot.pause(0.1)


@SIZES
def test_experiments_view(here, snap_compare, size):
    assert snap_compare(app_at(), terminal_size=size, run_before=validated)


@SIZES
def test_runs_view(here, snap_compare, size):
    assert snap_compare(app_at("runs"), terminal_size=size, run_before=all_runs_shown)


@SIZES
def test_monitor_of_a_finished_run(here, snap_compare, size):
    assert snap_compare(app_at("runs"), terminal_size=size, run_before=monitor_of(OK))


def test_monitor_of_a_failed_run(here, snap_compare):
    assert snap_compare(app_at("runs"), terminal_size=SIZE, run_before=monitor_of(FAILED))


async def compared(pilot) -> None:
    """The finished and the cancelled run compared, every part drawn."""
    await all_runs_shown(pilot)
    pilot.app.compare_runs([str((pilot.app.runs_dir / r).resolve()) for r in (OK, CANCELLED)])
    screen = await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen) and pilot.app.screen.is_mounted
                            and pilot.app.screen)
    await wait_for(pilot, lambda: screen.query_one("#deltas").row_count and screen.query_one("#diff").row_count
                   and "computing" not in str(screen.query_one("#seeds-title").render()))
    await pilot.pause(0.5)


@SIZES
def test_compare_view(here, snap_compare, size):
    assert snap_compare(app_at("runs"), terminal_size=size, run_before=compared)
