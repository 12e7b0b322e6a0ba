"""The TUI acts through the same backend calls as the CLI (ban_tui.backends): the runs tab's
delete is `ban rm`'s (a queued run leaves the queue, a running one is refused), and the hosts
tab follows a host's runs with the source its backend gives: a queued run on the loopback sshd
(tests/sshd.py) through the queue's source, a Slurm run on the one-node cluster through its job's.
Real processes throughout: the real scheduler with sleeping stand-in engines, a real OpenSSH
server, real submitit jobs."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import scheduler
from engine.runs import pid_alive
from ban_tui.app import BanApp
from ban_tui.remote.queue import QueuedRemoteSource
from ban_tui.remote.transport import host_call
from ban_tui.screens.confirm import Confirm
from ban_tui.screens.hosts import HostsTable
from ban_tui.screens.runs import RunsTable
from helpers import BAN, cli_env, digits_chain, loop_host
from sshd import sshd  # noqa: F401  (the fixture)
from test_tui_support import built, wait_for

SNAPSHOT = '[[experiment]]\nname = "q"\n'


def sleeper(run_id: str, python: str = sys.executable) -> list[str]:
    """A stand-in engine: `-m engine run --run-id ID` in its argv (so ban knows it for this run's
    engine) and a sleep instead of training."""
    return [python, "-c", "import time; time.sleep(60)", "-m", "engine", "run", "--run-id", run_id]


def kill_started(roots) -> None:
    """Stop the stand-in engines the scheduler started (their pids are in slot.json)."""
    for root in roots:
        try:
            pid = json.loads((Path(root) / scheduler.SLOT).read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


async def test_the_runs_tab_deletes_a_queued_run_and_refuses_a_running_one_as_ban_rm(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    runs = tmp_path / "runs"
    scheduler.configure(runs, slots=1)
    busy, waiting, other = (runs / "q" / f"20260101-00000{i}-s0-aaaa" for i in range(3))
    started = scheduler.submit(busy, SNAPSHOT, sleeper(busy.name))
    try:
        assert "pid" in started                                             # the one slot
        assert scheduler.submit(waiting, SNAPSHOT, sleeper(waiting.name)) == {"position": 1}
        assert scheduler.submit(other, SNAPSHOT, sleeper(other.name)) == {"position": 2}
        # `ban rm` on one queued run: what the runs tab must say and do for the other
        by_cli = subprocess.run([BAN, "rm", str(other), "--runs-dir", str(runs)], capture_output=True, text=True,
                                env=cli_env(), timeout=60)
        assert by_cli.returncode == 0 and by_cli.stdout.strip() == f"removed q/{other.name} from the queue"
        app = BanApp(tmp_path / "experiments.toml", runs, poll_interval=0.2, initial="runs")
        notes = []
        app.notify = lambda message, **kw: notes.append(str(message))
        async with app.run_test(size=(140, 40)) as pilot:
            await built(pilot)
            table = app.main_screen.query_one(RunsTable)
            await wait_for(pilot, lambda: table.row_count == 2, 30)
            table.focus()
            table.move_cursor(row=table.row_keys().index(str(waiting)))
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await wait_for(pilot, lambda: not waiting.exists() and table.row_count == 1, 30)
            assert f"removed q/{waiting.name} from the queue" in notes, notes
            assert [r for r, _ in scheduler.queued(runs)] == []               # out of the queue
            table.move_cursor(row=table.row_keys().index(str(busy)))
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await wait_for(pilot, lambda: any("not deleted" in n for n in notes), 30)
            assert any(f"q/{busy.name} is running (pid {started['pid']}); cancel it first" in n for n in notes), notes
            assert busy.is_dir() and pid_alive(started["pid"], started["pid_start"])
    finally:
        kill_started([busy, waiting])


def submit_sleeper(host, run_id: str) -> dict:
    """Queue a stand-in engine on the host's own scheduler, as `ban run --host` queues a chain."""
    runs = f"{host.workdir}/runs"
    request = {"runs_dir": runs, "root": f"{runs}/q/{run_id}", "cwd": host.workdir, "argv": sleeper(run_id),
               "need": 1, "paths": [], "wait": 0, "gpus": None, "slots": 1, "snapshot": SNAPSHOT}
    return host_call(host, ["submit"], "queueing", input=json.dumps(request).encode())


async def hosts_tab_follows(app: BanApp, pilot, host_name: str, want: list[Path]):
    """Select the host's row in the hosts tab (enter) once it lists the runs `want`; the runs the
    app then follows."""
    await built(pilot)
    app.show_panel("hosts")
    table = app.main_screen.query_one(HostsTable)
    pane = table.parent
    await wait_for(pilot, lambda: table.row_count and host_name in pane.statuses
                   and set(want) <= {Path(r.dir) for r in pane.statuses[host_name].runs}, 120)
    table.focus()
    table.move_cursor(row=table.row_keys().index(f"{host_name}#0"))
    await pilot.press("enter")
    return await wait_for(pilot, lambda: set(want) <= set(app.watcher.models) and dict(app.watcher.models), 60)


async def test_the_hosts_tab_follows_a_queued_run_through_the_queues_source(sshd, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = tmp_path / "experiments.toml"
    config.write_text(digits_chain("q", epochs=1) + loop_host(sshd.workdir, slots=1))
    host = sshd.host(slots=1)
    busy, waiting = submit_sleeper(host, "20260101-000000-s0-aaaa"), submit_sleeper(host, "20260101-000001-s0-bbbb")
    try:
        assert "pid" in busy and waiting.get("position") == 1
        app = BanApp(config, tmp_path / "runs", poll_interval=0.2)
        async with app.run_test(size=(140, 40)) as pilot:
            models = await hosts_tab_follows(app, pilot, "loop", [Path(busy["dir"]), Path(waiting["dir"])])
            queued = models[Path(waiting["dir"])]
            assert isinstance(queued.source, QueuedRemoteSource) and queued.source.host.name == "loop"
            assert await wait_for(pilot, lambda: queued.status() == "queued", 30)
            assert not queued.source.ended()            # waiting for a slot is not the end
    finally:
        kill_started([busy["dir"], waiting["dir"]])


@pytest.mark.timeout(900)
async def test_the_hosts_tab_follows_a_slurm_run_through_its_jobs_source(sshd, tmp_path, monkeypatch):  # noqa: F811
    from test_slurm import cluster_host, cluster_or_skip, ends
    from ban_tui.slurm import SlurmSource
    cluster_or_skip()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = tmp_path / "experiments.toml"
    config.write_text(digits_chain("far", epochs=3, batch_size=64, generations=1, seeds=[3], device="cpu")
                      + cluster_host(sshd.workdir))
    submitted = subprocess.run([BAN, "run", str(config), "--host", "cluster", "--detach"], capture_output=True,
                               text=True, env=cli_env(), timeout=300, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    root = Path(re.search(r"^submitted far/\S+ as Slurm job \S+ in cluster:(\S+)$", submitted.stdout, re.M).group(1))
    app = BanApp(config, tmp_path / "runs", poll_interval=0.2)
    async with app.run_test(size=(140, 40)) as pilot:
        model = (await hosts_tab_follows(app, pilot, "cluster", [root]))[root]
        assert isinstance(model.source, SlurmSource) and model.source.host.name == "cluster"
        await wait_for(pilot, lambda: model.status() == "ok" and model.source.ended(), 600)   # to the job's end
    assert ends(root) == [("run_start", False), ("run_end", "ok")]
