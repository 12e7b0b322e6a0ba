"""The runs table driven through the pilot, on run directories written by hand: objective, seed,
config-hash and tags columns, long names cut with an ellipsis, filter (/) and sort (s); and the
experiment list's long names."""
from __future__ import annotations

import pytest
from textual.widgets import Input, OptionList

from ban_tui import notes
from ban_tui.app import BanApp
from ban_tui.report import config_key
from engine.events import read_events
from engine.runs import RunPaths, snapshot_experiment
from ban_tui.screens.runs import NAME_WIDTH, RunsTable
from test_tui_support import CONFIG, built, cells, make_run, wait_for

LONG = "a-very-long-experiment-name-of-a-learning-rate-sweep"


@pytest.fixture
def runs(tmp_path):
    (tmp_path / "experiments.toml").write_text(CONFIG)
    runs = tmp_path / "runs"
    tiny = make_run(runs, "20250101-000000-s0-aaaa", 0, [[0.5, 0.3]] * 3, ens=0.2)
    other = make_run(runs, "20250101-000100-s1-bbbb", 1, [[0.5, 0.1]] * 3, objective="cwtm", name="cw")
    long = make_run(runs, "20250101-000200-s2-cccc", 2, [[0.5, 0.2]] * 3, name=LONG, lr=0.05)
    notes.change_tags(tiny, ["+baseline", "+paper"])
    return {"tiny": tiny, "cw": other, "long": long}


def rows(table) -> list[dict]:
    return [dict(zip([k for k, _ in table.spec], r)) for r in cells(table)]


async def shown(pilot, app, n=3) -> RunsTable:
    table = app.main_screen.query_one(RunsTable)
    await wait_for(pilot, lambda: table.row_count == n and all(r["status"].endswith("ok") for r in rows(table)))
    return table


async def test_columns_and_long_names(runs):
    app = BanApp(runs["tiny"].parents[2] / "experiments.toml", runs["tiny"].parents[1], poll_interval=0.05,
                 initial="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        table = await shown(pilot, app)
        by_key = dict(zip(table.row_keys(), rows(table)))
        tiny = by_key[str(runs["tiny"])]
        assert tiny["objective"] == "ce→ban" and tiny["seed"] == "0" and tiny["tags"] == "baseline, paper"
        assert tiny["config"] == config_key(snapshot_experiment(runs["tiny"]), read_events(RunPaths(runs["tiny"]).events)) \
            and len(tiny["config"]) == 12
        assert by_key[str(runs["cw"])]["objective"] == "ce→cwtm" and by_key[str(runs["cw"])]["tags"] == "-"
        long = by_key[str(runs["long"])]["run"]
        assert len(long) == NAME_WIDTH and "…" in long and long.endswith("/20250101-000200-s2-cccc")
        assert long.startswith(LONG[:10])
        assert by_key[str(runs["long"])]["config"] != tiny["config"]          # lr 0.05: another configuration


async def test_filter_and_sort(runs):
    app = BanApp(runs["tiny"].parents[2] / "experiments.toml", runs["tiny"].parents[1], poll_interval=0.05,
                 initial="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        table = await shown(pilot, app)
        assert table.row_keys() == [str(runs[k]) for k in ("tiny", "cw", "long")]    # started, oldest first
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"paper")                                   # a tag
        assert table.row_keys() == [str(runs["tiny"])]
        assert "1 of 3" in str(app.main_screen.query_one("#runs-title").render())
        await pilot.press("enter")
        assert app.focused is table
        await pilot.press("slash", *["backspace"] * 5, *"cwtm")       # an objective
        assert table.row_keys() == [str(runs["cw"])]
        await pilot.press("escape")                                   # clears it
        assert table.row_count == 3 and app.focused is table
        await pilot.press("slash", *"s2-cccc sweep", "enter")         # every word: run id and experiment
        assert table.row_keys() == [str(runs["long"])]
        await pilot.press("escape")
        await pilot.press("s")                                        # by run name
        assert "sorted by run" in str(app.main_screen.query_one("#runs-title").render())
        assert table.row_keys() == [str(runs[k]) for k in ("long", "cw", "tiny")]
        await pilot.press("s", "s")                                   # by last test error, lowest first
        assert "sorted by last test" in str(app.main_screen.query_one("#runs-title").render())
        assert [r["last"] for r in rows(table)] == ["10.00%", "20.00%", "30.00%"]
        table.move_cursor(row=0)
        await pilot.press("space", "s")                               # a mark stays through a new sort
        assert [r["mark"] for r in rows(table)] == ["", "", "*"] and table.row_keys()[2] == str(runs["cw"])


@pytest.mark.parametrize("width", [80, 120])
async def test_a_long_experiment_name_is_cut_in_the_list_and_opens_whole(tmp_path, width):
    config = tmp_path / "experiments.toml"
    config.write_text(CONFIG.replace('name = "tiny"', f'name = "{LONG}"'))
    app = BanApp(config, tmp_path / "runs", poll_interval=0.05)
    async with app.run_test(size=(width, 40)) as pilot:
        await built(pilot)
        options = app.experiments.query_one("#experiments", OptionList)
        room = options.scrollable_content_region.width   # 24 columns of list under 100, else 34
        prompt = await wait_for(pilot, lambda: len(p := str(options.get_option_at_index(0).prompt)) < room and p)
        assert prompt.endswith("…") and len(prompt) <= 30 and LONG.startswith(prompt[:-1])
        await pilot.pause()
        assert options.virtual_size.height == options.option_count      # one line each: never wrapped
        options.focus()
        options.highlighted = 0
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.experiments.draft.name == LONG
