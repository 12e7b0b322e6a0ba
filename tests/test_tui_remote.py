"""Launching a chain on a host from the TUI: an experiment with `host = ...` starts there over
ssh (a real OpenSSH server on 127.0.0.1, tests/sshd.py), is followed through RemoteSource, and
`x` / `r` cancel and resume it there."""
from __future__ import annotations

import os
import pytest
import signal
import sys

from ban_tui.remote.source import RemoteSource
from ban_tui.app import BanApp
from ban_tui.screens.confirm import Confirm
from ban_tui.screens.runs import RunsTable
from engine.runs import pid_alive
from sshd import sshd  # noqa: F401  (the fixture)
from helpers import hold
from test_tui_support import cells, wait_for


async def test_launch_on_a_host_and_follow_it(sshd, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))   # no user hosts file
    config = tmp_path / "experiments.toml"
    config.write_text('[[experiment]]\nname = "far"\nepochs = 5\ngenerations = 1\nhost = "loop"\n\n'
                      f'[hosts.loop]\nssh = "loop"\nworkdir = "{sshd.workdir}"\npython = "{sys.executable}"\n')
    gate = hold(sshd.workdir / "runs" / "far")   # held after each epoch there until cancelled
    app = BanApp(config, tmp_path / "runs")
    engine = None
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_for(pilot, lambda: app.focused is not None)
            await pilot.press("ctrl+r")
            model = await wait_for(pilot, lambda: next(iter(app.watcher.models.values()), None), 120)
            assert isinstance(model.source, RemoteSource) and model.source.host.name == "loop"
            await wait_for(pilot, lambda: model.state.pid, 60)             # run_start, fetched over ssh
            engine = (model.state.pid, model.state.pid_start)
            table = app.main_screen.query_one(RunsTable)
            def first_row():
                return table.row_count and dict(zip([k for k, _ in table.spec], cells(table)[0]))
            # the table redraws on its own tick: "starting" until it has drawn the run_start
            row = await wait_for(pilot, lambda: (r := first_row()) and r["status"].endswith("running") and r, 60)
            assert row["run"].startswith("far/")
            assert not (tmp_path / "runs").exists()                       # nothing ran here
            await pilot.press("x")                                       # cancel: on the host, over ssh
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))   # (it asks first)
            await pilot.press("y")
            await wait_for(pilot, lambda: (model.state.end or {}).get("status") == "cancelled", 180)
            assert not (tmp_path / "runs").exists()
            await wait_for(pilot, lambda: not pid_alive(*engine), 60)
            gate.unlink()
            await pilot.press("r")                                       # resume: there again
            await wait_for(pilot, lambda: model.state.end is None and model.state.pid not in (None, engine[0]), 180)
            engine = (model.state.pid, model.state.pid_start)
    finally:
        if engine and pid_alive(*engine):   # loopback: the host's engine is a process of this machine
            os.killpg(engine[0], signal.SIGKILL)
