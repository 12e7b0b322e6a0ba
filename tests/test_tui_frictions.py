"""The small frictions, driven through the pilot: marks visible at once, number keys switch
tabs, `?` shows the keys, delete asks and refuses a live run, unsaved edits ask before being
dropped (and on quit), fast typing into the form loses nothing."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ban_tui.app import BanApp
from ban_tui.screens.confirm import Confirm
from ban_tui.screens.runs import RunsTable, remove_run
from ban_tui.widgets.footer import KeysFooter
from test_tui_support import CONFIG, OK, STALE, built, cells, copy_runs, wait_for


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "experiments.toml"
    config.write_text(CONFIG)
    return config, copy_runs(tmp_path, stale=True)


async def runs_shown(pilot, app, n=5):
    table = app.main_screen.query_one(RunsTable)
    await wait_for(pilot, lambda: table.row_count == n)
    return table


async def focused_name(pilot, app):
    """The form's name input, focused once the form has settled."""
    await built(pilot)
    name = app.experiments.query_one("#name")
    name.focus()
    return name


async def test_a_mark_is_visible_at_once(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(140, 40)) as pilot:
        table = await runs_shown(pilot, app)
        assert app.focused is table                      # the table has focus when its tab shows
        await pilot.press("space")
        assert table.columns["mark"].content_width >= 1        # not a zero-width column until a new row
        assert cells(table)[0][0] == "*"


async def test_number_keys_switch_tabs_and_question_mark_shows_keys(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(140, 40)) as pilot:
        table = await runs_shown(pilot, app)
        await pilot.press("3")
        assert app.main_screen.query_one("#panels").active == "hosts"
        await pilot.press("2")
        assert app.main_screen.query_one("#panels").active == "runs" and app.focused is table
        await pilot.press("question_mark")
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")


async def test_a_tab_shown_before_it_was_built_is_built_at_once_and_takes_focus(setup):
    """Only the first tab is built before the first frame; a key pressed at once still works."""
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05)
    async with app.run_test(size=(140, 40)) as pilot:
        first_frame = [p.id for p in app.main_screen.unbuilt]
        await pilot.press("f3")
        table = await runs_shown(pilot, app)
        assert app.main_screen.query_one("#panels").active == "runs" and app.focused is table
        await wait_for(pilot, lambda: app.main_screen.built)
        assert app.main_screen.query("#hosts-table") and app.experiments.form.is_mounted
    assert first_frame == ["runs", "hosts"]   # run_test hands over at the first frame

@pytest.mark.parametrize("width", [80, 100, 160])
async def test_the_footer_keeps_the_help_key_in_view_and_a_click_presses_a_key(setup, width):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(width, 24)) as pilot:
        table = await runs_shown(pilot, app)
        footer = app.screen.query_one(KeysFooter)
        text = footer.render().plain
        assert text.rstrip().endswith("? Keys") and len(text) <= width
        assert text.lstrip().startswith("⏎ Open")          # the focused table's keys come first
        if width < 160:
            assert "…" in text                              # keys that do not fit give way, visibly
        start = next(s for s, _e, key in footer.spans if key == "space")
        await pilot.click(KeysFooter, offset=(start, 0))
        assert cells(table)[0][0] == "*"                    # space: the row under the cursor is marked


async def test_delete_asks_and_removes_a_finished_run(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    async with app.run_test(size=(140, 40)) as pilot:
        table = await runs_shown(pilot, app)
        ok = str((runs / OK).resolve())
        table.move_cursor(row=table.row_keys().index(ok))
        await pilot.press("d")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        assert Path(ok).is_dir()
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: table.row_count == 4)
        assert not Path(ok).exists() and ok not in table.row_keys()


def test_a_live_run_is_never_removed(tmp_path):
    import os
    import subprocess
    import sys
    from engine.events import EventWriter
    from engine.runs import process_start_time
    run = tmp_path / "x" / "20250101-000000-s0-live"
    run.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        w = EventWriter(run / "events.jsonl", run.name)
        w.emit("run_start", experiment="x", pid=proc.pid, pid_start=process_start_time(proc.pid))
        w.close()
        with pytest.raises(OSError, match="still running"):
            remove_run(run)
        assert run.is_dir()
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(OSError, match="not a run directory"):
        remove_run(tmp_path)
    assert os.path.isdir(tmp_path)


async def test_unsaved_edits_ask_before_quitting(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05)
    async with app.run_test(size=(140, 40)) as pilot:
        await focused_name(pilot, app)
        await pilot.press("end", "x")
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, Confirm)
        await pilot.press("c")                       # cancel: stay, edits kept
        assert not isinstance(app.screen, Confirm) and app.experiments.dirty
        await pilot.press("ctrl+q", "d")             # discard: quit
        await pilot.pause()
    assert config.read_text() == CONFIG


async def test_fast_typing_into_the_name_loses_nothing(setup):
    config, runs = setup
    app = BanApp(config, runs, poll_interval=0.05)
    async with app.run_test(size=(140, 40)) as pilot:
        name = await focused_name(pilot, app)
        name.value = ""
        typed = "chain-1-burst-test-abcdefghijklmnopqrstu"
        assert len(typed) == 40
        await pilot.press(*[c if c.isalnum() else "minus" for c in typed], *["backspace"] * 10)
        await pilot.pause(0.6)
        assert app.experiments.query_one("#name").value == typed[:30]
        assert app.experiments.draft.name == typed[:30]


async def test_quitting_while_the_hidden_tabs_are_still_being_built_closes_cleanly(setup):
    """Quit at any moment of the first half second: the tabs built after the first frame may be
    mid-mount then, and the exit must still be clean (it used to fail in a Select's mount)."""
    config, runs = setup
    for i in range(12):
        app = BanApp(config, runs, poll_interval=0.05, initial="runs")
        async with app.run_test(size=(120, 40)):
            await asyncio.sleep(i * 0.04)
        assert app.return_code in (None, 0), f"quit after {i * 0.04:.2f} s: {app._exception!r}"


async def test_the_palettes_screenshot_is_saved_beside_the_config_and_says_where(setup, monkeypatch, tmp_path):
    """Textual saves to ~/Downloads, which need not exist (it failed there): beside the config instead."""
    config, runs = setup
    monkeypatch.setenv("HOME", str(tmp_path / "home-without-downloads"))
    app = BanApp(config, runs, poll_interval=0.05, initial="runs")
    notes = []
    app.notify = lambda message, **kw: notes.append(str(message))
    async with app.run_test(size=(140, 40)) as pilot:
        await runs_shown(pilot, app)
        await pilot.press("ctrl+p")
        await pilot.press(*"screenshot")
        await pilot.pause(0.3)
        await pilot.press("enter")
        shots = await wait_for(pilot, lambda: list((config.parent / "screenshots").glob("*.svg")))
        await wait_for(pilot, lambda: any("Saved screenshot to" in n for n in notes))
    assert "<svg" in shots[0].read_text()[:500] and str(shots[0]) in " ".join(notes)
