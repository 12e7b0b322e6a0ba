"""The comparison screen driven through the pilot, on run directories written by hand (a real
snapshot from engine.spec, events from engine.events.EventWriter): overlaid test-error curves,
the config keys that differ, deltas against the first marked run, and `ban report`'s mean ± CI
when the marked runs are seeds of one configuration."""
from __future__ import annotations

import pytest

from ban_tui import report
from ban_tui.app import BanApp
from ban_tui.screens.compare import CompareScreen
from ban_tui.tables import config_diff, delta_rows, flatten_snapshot
from ban_tui.widgets.curves import CurvePlot
from engine.runs import load_state
from test_tui_support import CONFIG, cells, make_run, wait_for


@pytest.fixture
def runs(tmp_path):
    (tmp_path / "experiments.toml").write_text(CONFIG)
    return tmp_path / "runs"


async def open_compare(pilot, app, dirs) -> CompareScreen:
    await wait_for(pilot, lambda: len(app.watcher.models) == len(dirs)
                   and all(m.state.end for m in app.watcher.models.values()))
    app.compare_runs([str(d) for d in dirs])
    screen = await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.is_mounted
                            and app.screen)
    await wait_for(pilot, lambda: screen.query_one("#deltas").row_count)
    return screen


def test_config_diff_keeps_only_the_keys_that_differ():
    a = {"name": "x", "Teacher epochs": "15", "Teacher optimizer.lr": "0.1"}
    b = {"name": "x", "Teacher epochs": "4", "Teacher optimizer.lr": "0.1", "BAN-1 epochs": "4"}
    assert config_diff([a, b, None]) == [
        {"key": "Teacher epochs", "r0": "15", "r1": "4", "r2": "-"},
        {"key": "BAN-1 epochs", "r0": "-", "r1": "4", "r2": "-"}]
    flat = flatten_snapshot({"name": "x", "dataset": {"name": "digits"},
                             "generation": [{"epochs": 2, "optimizer": {"lr": 0.1}}, {"compile": False}]})
    assert flat == {"name": "x", "dataset.name": "digits", "Teacher epochs": "2", "Teacher optimizer.lr": "0.1",
                    "BAN-1 compile": "false"}


async def test_two_configurations_curves_diff_and_deltas(runs):
    a = make_run(runs, "20250101-000000-s0-aaaa", 0, [[0.5, 0.3, 0.2, 0.1]] * 3, ens=0.09, epochs=4, lr=0.1)
    b = make_run(runs, "20250101-000100-s0-bbbb", 0, [[0.6, 0.4]] * 3, ens=0.30, epochs=2, lr=0.05,
                 objective="ban", name="tiny")
    app = BanApp(runs.parent / "experiments.toml", runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_compare(pilot, app, [a, b])
        plot = screen.query_one("#test-curves", CurvePlot)
        # one series per run and generation, each run on its own chain axis
        assert plot.plotted == {**{f"A {g} test_err": 4 for g in ("Teacher", "BAN-1", "BAN-2")},
                                **{f"B {g} test_err": 2 for g in ("Teacher", "BAN-1", "BAN-2")}}
        assert plot.boundaries == {"BAN-1": 4, "BAN-2": 8, "B:BAN-1": 2, "B:BAN-2": 4}
        assert "%" in plot.title
        diff = {row[0]: row[1:] for row in cells(screen.query_one("#diff"))}
        assert diff["Teacher epochs"] == ["4", "2"] and diff["BAN-2 optimizer.lr"] == ["0.1", "0.05"]
        assert "name" not in diff and "dataset.name" not in diff      # only what differs
        assert "keys differ" in str(screen.query_one("#diff-title").render())
        deltas = {row[0]: row[1:] for row in cells(screen.query_one("#deltas"))}
        assert deltas["Teacher"] == ["10.00%", "40.00% +30.00"]
        assert deltas["Ens*2"] == ["9.00%", "30.00% +21.00"]
        assert list(deltas) == ["Teacher", "BAN-1", "BAN-2", "Ens*2"]
        title = await wait_for(pilot, lambda: "configuration" in (t := str(screen.query_one("#seeds-title").render())) and t)
        assert "not seeds of one configuration" in title and not screen.query_one("#seeds").display
        legend = str(screen.query_one("#legend").render())
        assert "A ━ tiny/20250101-000000-s0-aaaa" in legend and "(reference)" in legend
        await pilot.press("l")
        assert plot.log_scale
        await pilot.press("2")                                   # hide run B
        assert plot.plotted and not any(k.startswith("B ") for k in plot.plotted)
        await pilot.press("2")
        assert any(k.startswith("B ") for k in plot.plotted)


async def test_seeds_of_one_configuration_show_the_report_numbers(runs):
    dirs = [make_run(runs, f"20250101-00000{s}-s{s}-seed", s, [[0.5, 0.2 + s / 100], [0.4, 0.15 + s / 50], [0.4, 0.16]],
                     ens=0.12 + s / 100) for s in range(3)]
    app = BanApp(runs.parent / "experiments.toml", runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_compare(pilot, app, dirs)
        assert "every key the same" in str(screen.query_one("#diff-title").render())
        assert screen.query_one("#diff").row_count == 0
        table = screen.query_one("#seeds")
        await wait_for(pilot, lambda: table.row_count)
        title = str(screen.query_one("#seeds-title").render())
        assert "seeds of one configuration" in title and "3 ok of 3 seeds" in title
        expected = report.rows(report.collect(dirs))      # the same numbers as `ban report`
        shown = cells(table)
        assert shown == [[str(r[k]) for k, _ in table.spec] for r in expected]
        by_column = {row[0]: row for row in shown}
        assert "±" in by_column["BAN-1"][2] and "[" in by_column["BAN-1"][3]   # mean ± std, paired 95 % CI
        assert by_column["Teacher"][3] == ""                                   # no difference with itself
        deltas = {row[0]: row[1:] for row in cells(screen.query_one("#deltas"))}
        state = [load_state(d) for d in dirs]
        assert deltas == {r["column"]: [r[f"r{i}"] for i in range(3)] for r in delta_rows(state)}
        assert deltas["Teacher"][1] == "21.00% +1.00"
