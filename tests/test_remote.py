"""Remote boxes over SSH, against a real OpenSSH server on 127.0.0.1 (tests/sshd.py)."""
from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ban_tui import hosts
from ban_tui.remote import gpus, operations, transport
from ban_tui.remote.source import RemoteSource
from engine.events import read_events
from engine.runs import load_state
from engine.spec import Host, SpecError, loads
from helpers import ban, cli_env, digits_chain, held, hold, loop_host, wait_until
from sshd import sshd  # noqa: F401  (the fixture; tests/ is on sys.path)


def wait_for(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what, step=0.05)


# ---- hosts ----------------------------------------------------------------------------------

CONFIG = """
[[experiment]]
name = "a"
[hosts.gpu1]
ssh = "gpu1-from-config"
workdir = "/srv/ban"
"""


def test_user_hosts_file_merges_under_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = tmp_path / "ban" / "hosts.toml"
    assert hosts.user_hosts_path() == path
    assert hosts.load_user_hosts() == {}
    path.parent.mkdir()
    path.write_text('[hosts.gpu1]\nssh = "gpu1-from-user"\n[hosts.gpu2]\nssh = "me@gpu2"\npython = "py"\n')
    merged = hosts.all_hosts(loads(CONFIG))
    assert merged["gpu1"].ssh == "gpu1-from-config" and merged["gpu1"].workdir == "/srv/ban"
    assert merged["gpu2"] == Host("gpu2", "me@gpu2", python="py")
    assert hosts.get_host("gpu2").ssh == "me@gpu2"
    with pytest.raises(LookupError, match=r"unknown host 'gpu3'.*known: gpu1, gpu2"):
        hosts.get_host("gpu3", loads(CONFIG))


@pytest.mark.parametrize("text, expected", [
    ('[hosts.gpu1]\nssh = "-oProxyCommand=touch x"\n', r"hosts.toml:2:\d+: hosts.gpu1.ssh: expected an ssh destination"),
    ('[hosts.gpu1]\nssh = "a"\nworkdri = "/x"\n', r"hosts.toml:3:\d+: hosts.gpu1.workdri: unknown key \(did you mean 'workdir'\?\)"),
    ('[hosts.gpu1]\nworkdir = "/x"\n', r"hosts.toml:1:\d+: hosts.gpu1: expected key 'ssh'"),
    ('[hosts.gpu1\n', r"hosts.toml: TOML syntax error"),
    ('[defaults]\nepochs = 1\n', r"hosts.toml:1:\d+: defaults: unknown key; expected one of: hosts"),
])
def test_bad_user_hosts_file_names_file_key_and_expectation(tmp_path, text, expected):
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=expected):
        hosts.load_user_hosts(path)


# ---- quoting and hostile values -------------------------------------------------------------

def test_rpath_keeps_home_and_quotes_everything_else():
    assert transport.rpath("~/ban/runs") == '"$HOME"/ban/runs'
    assert transport.rpath("/a b/c") == "'/a b/c'"
    out = subprocess.run(["sh", "-c", "printf %s " + transport.rpath("~/x $(y) `z`;'q'\n")],
                         capture_output=True, text=True, env={**os.environ, "HOME": "/h"}).stdout
    assert out == "/h/x $(y) `z`;'q'\n"


HOSTILE = ["x'; touch {canary}; '$(touch {canary})`touch {canary}`",
           'a b;touch {canary}\ntouch {canary} && "; touch {canary}; "']


def test_hostile_host_values_never_run_anything(sshd, tmp_path):
    canary = tmp_path / "canary"
    exp = loads('[[experiment]]\nname = "e"\nmodel = "cnn-small"\n').experiments["e"]
    # A python that runs the real one, except for `-m engine`, whose argv it records and drops.
    argv_file = sshd.workdir / "engine-argv"
    fake = sshd.workdir / "fake-python"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = engine ]; then printf "%s\\0" "$@" > {argv_file}; exit 3; fi\n'
                    f'exec {shlex.quote(sys.executable)} "$@"\n')
    fake.chmod(0o755)
    for bad in HOSTILE:
        bad = bad.format(canary=canary)
        for key in ("workdir", "python", "runs_dir"):
            value = str(sshd.workdir / bad) if key == "workdir" else bad
            host = sshd.host(**{"python": str(fake), key: value})
            runs = operations.remote_runs_dir(host)
            with pytest.raises(transport.RemoteError, match="not found there" if key == "python" else "exited at once"):
                operations.launch(host, exp, seed=0, run_id="r1", wait=5)
            if key != "python":   # the engine got every word verbatim
                argv = argv_file.read_bytes().decode().split("\0")[:-1]
                assert argv == ["-m", "engine", "run", posixpath.join(runs, "e", "r1", "experiment.toml"),
                                "--experiment", "e", "--seed", "0", "--runs-dir", runs, "--run-id", "r1"]
                assert (Path(runs) / "e" / "r1" / "experiment.toml").exists()
                assert [r.dir for r in operations.list_remote_runs(host)] == [posixpath.join(runs, "e", "r1")]
                argv_file.unlink()
            src = RemoteSource(host, posixpath.join(runs, "e", bad))
            assert src.poll() == [] and src.connected
            with pytest.raises((transport.RemoteError, ValueError)):
                operations.pull(host, posixpath.join(runs, "e", bad), tmp_path / "pulled")
    with pytest.raises(transport.RemoteError, match="expected an ssh destination"):
        gpus.gpu_status(sshd.host(ssh=f"-oProxyCommand=touch {canary}"))
    with pytest.raises(ValueError, match="invalid experiment name"):
        operations.remote_run_dir(sshd.host(), f"e;touch {canary}", "r")
    assert not canary.exists()


def test_odd_but_legal_paths_are_used_verbatim(sshd):
    odd = "we ird'dir $(x) ;"
    host = sshd.host(workdir=str(sshd.workdir / odd), runs_dir="r uns")
    assert operations.check_engine(host)["schema"] == 1
    transport.run_checked(host, f"mkdir -p {transport.rpath(operations.remote_runs_dir(host))}", "mkdir")
    assert (sshd.workdir / odd / "r uns").is_dir()
    assert operations.list_remote_runs(host) == []


# ---- engine check and GPU status --------------------------------------------------------------

def test_check_engine_reports_missing_python_and_engine(sshd):
    assert operations.check_engine(sshd.host()) == operations.engine_versions()
    with pytest.raises(transport.RemoteError, match=r"python '/nonexistent/python3' not found there"):
        operations.check_engine(sshd.host(python="/nonexistent/python3"))
    # A python that cannot import the engine: isolated mode ignores the venv's site-packages.
    bare = sshd.workdir / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S \"$@\"\n")
    bare.chmod(0o755)
    with pytest.raises(transport.RemoteError, match=r"engine is not importable .*ModuleNotFoundError"):
        operations.check_engine(sshd.host(python=str(bare)))


def test_gpu_status_of_a_box_without_gpus_and_of_one_with(sshd):
    plain = gpus.gpu_status(sshd.host("loop"))
    assert plain.reachable and plain.gpus is None and plain.summary == "no NVIDIA GPU"
    gpu = gpus.gpu_status(sshd.host("loopgpu"))
    assert gpu.reachable and gpu.error == "" and gpu.summary == "2 GPUs"
    assert gpu.gpus == [gpus.GpuRow(0, "NVIDIA H100 80GB HBM3", 37.0, 1024.0, 81559.0),
                        gpus.GpuRow(1, "NVIDIA H100 80GB HBM3", None, 80000.0, 81559.0)]


def test_gpu_status_of_an_unreachable_box_shows_the_ssh_error(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(Path(os.environ["BAN_SSH_CONFIG"]).read_text()
                      + "Host closed\n  HostName 127.0.0.1\n  Port 1\n")
    old = os.environ["BAN_SSH_CONFIG"]
    os.environ["BAN_SSH_CONFIG"] = str(config)
    try:
        status = gpus.gpu_status(sshd.host("closed"))
    finally:
        os.environ["BAN_SSH_CONFIG"] = old
    assert not status.reachable and "Connection refused" in status.error
    assert status.summary.startswith("unreachable: ") and status.gpus is None


# ---- following through dropped connections ----------------------------------------------------

# A slow writer on the host: each event line goes out in two writes, so readers see partial lines.
WRITER = """\
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
for seq in range(1, int(sys.argv[2]) + 1):
    line = json.dumps({"v": 1, "seq": seq, "ts": time.time(), "run": "r", "kind": "heartbeat"}) + "\\n"
    os.write(fd, line[:20].encode()); time.sleep(0.004); os.write(fd, line[20:].encode()); time.sleep(0.012)
"""


def test_follow_survives_dropped_connections_and_sshd_restarts(sshd):
    host, n = sshd.host(), 400
    rdir = posixpath.join(operations.remote_runs_dir(host), "drops", "r1")
    events_file = Path(rdir) / "events.jsonl"
    transport.run_checked(host, (
        f"mkdir -p {transport.rpath(rdir)} || exit 1; setsid nohup {transport.rpath(host.python)} -c {shlex.quote(WRITER)} "
        f"{transport.rpath(str(events_file))} {n} < /dev/null > /dev/null 2>&1 &"), "start the writer")

    source, seen, kills = RemoteSource(host, rdir, timeout=5), [], []
    background, seen_bg = RemoteSource(host, rdir, timeout=5).start(), []   # fetches in its thread

    # Sabotage once the source has seen events (on a loaded machine the first fetch may be slow).
    seen += source.poll()
    first = time.monotonic() + 60
    while not seen and time.monotonic() < first:
        time.sleep(0.05)
        seen += source.poll()
    assert seen, source.error
    thread = threading.Thread(target=sshd.sabotage, args=(4, 0.6, 1.5, kills))
    thread.start()
    disconnected_seen = False
    deadline = time.monotonic() + 60
    try:
        while ((len(seen) < n or len(seen_bg) < n or thread.is_alive() or not source.connected)
               and time.monotonic() < deadline):
            t = time.monotonic()
            seen_bg += background.poll()
            assert time.monotonic() - t < 0.05          # handing over never waits on the network
            seen += source.poll()
            if source.connected is False:
                disconnected_seen = True
                assert source.error and source.since_last_event() is not None
            time.sleep(0.02)
    finally:
        thread.join()
    print(f"drops {source.drops}, kills {kills}, took {time.monotonic() - deadline + 60:.1f} s")
    assert disconnected_seen and source.drops >= 1 and sum(kills) >= 1
    assert source.connected
    assert [e["seq"] for e in seen] == list(range(1, n + 1))   # none lost, none twice
    assert seen == read_events(events_file)                    # exactly the file's events
    assert source.state.n_events == n
    background.stop()
    assert seen_bg == seen and background.drops >= 1

    again = RemoteSource(host, rdir)                    # reattach: the whole history
    assert again.poll() == seen and again.connected and again.drops == 0


def test_follow_waits_for_a_file_that_does_not_exist_yet(sshd):
    host = sshd.host()
    rdir = posixpath.join(operations.remote_runs_dir(host), "late", "r1")
    source = RemoteSource(host, rdir, interval=0)
    assert source.poll() == [] and source.connected and source.decoder.offset == 0
    Path(rdir).mkdir(parents=True)
    (Path(rdir) / "events.jsonl").write_text('{"v":1,"seq":1,"ts":1.0,"run":"r","kind":"heartbeat"}\n{"v":1,"se')
    assert [e["seq"] for e in source.poll()] == [1]
    with open(Path(rdir) / "events.jsonl", "a") as f:
        f.write('q":2,"ts":2.0,"run":"r","kind":"heartbeat"}\n')
    assert [e["seq"] for e in source.poll()] == [2]


def test_a_run_resumed_after_its_end_is_followed_until_its_new_engine_exits(sshd):
    """The host's answer about liveness names the pid it was asked about: a fetch that brings a
    resume's run_start (a new pid) after the old run_end must not read the new engine as dead."""
    from ban_tui.remote.queue import QueuedRemoteSource
    from engine.events import EventWriter
    from engine.runs import process_start_time
    host = sshd.host()
    rdir = Path(operations.remote_runs_dir(host)) / "again" / "r1"
    rdir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        w = EventWriter(rdir / "events.jsonl", "r1")
        w.emit("run_start", experiment="again", seed=0, pid=gone.pid, pid_start=None)
        w.emit("run_end", status="cancelled", error=None)
        w.emit("run_start", experiment="again", seed=0, pid=engine.pid, pid_start=process_start_time(engine.pid))
        w.close()
        source = QueuedRemoteSource(host, str(rdir), interval=0)
        assert len(source.poll()) == 3 and not source.ended()   # the new engine is not known dead
        source.poll()
        assert source.alive is True and not source.ended() and source.status() == "running"
    finally:
        engine.kill()
        engine.wait()
    source.poll()
    assert source.alive is False and source.ended()


def test_follow_in_chunks_and_after_the_file_is_replaced(sshd):
    host = sshd.host()
    rdir = Path(operations.remote_runs_dir(host)) / "chunks" / "r1"
    rdir.mkdir(parents=True)
    line = '{{"v":1,"seq":{},"ts":1.0,"run":"r","kind":"heartbeat"}}\n'
    (rdir / "events.jsonl").write_text("".join(line.format(i) for i in range(1, 21)))
    source = RemoteSource(host, str(rdir), interval=30, max_bytes=150)   # ~2.5 lines a fetch
    seen = []
    for _ in range(30):
        seen += source.poll()       # a full chunk asks again at once, despite the interval
    assert [e["seq"] for e in seen] == list(range(1, 21)) and not source.more
    assert source.poll() == []      # now the interval holds
    # Replaced by a shorter file (a run restarted by hand): read again from 0, seen seqs dropped.
    (rdir / "events.jsonl").write_text("".join(line.format(i) for i in (19, 20, 21)))
    source.next_try = 0
    seen = [e for _ in range(5) for e in source.poll()]
    assert [e["seq"] for e in seen] == [21]


# ---- a real chain on "the remote", through the CLI and the API ----------------------------------


def tiny(workdir) -> str:
    return digits_chain("tiny", epochs=2, batch_size=128, generations=1, ensembles=[1], seeds=[0], host="loop") \
        + loop_host(workdir)



def test_run_on_a_host_follow_through_drops_reattach_ls_pull_and_report(sshd, tmp_path):
    host = sshd.host()
    (tmp_path / "tiny.toml").write_text(tiny(sshd.workdir))
    gate = hold(Path(sshd.workdir) / "runs" / "tiny")   # running by construction until the drops are done
    started = ban("run", "tiny.toml", "--detach", cwd=tmp_path)    # the experiment's host = "loop"
    assert started.returncode == 0, started.stderr
    match = re.search(r"started tiny/(\S+) \(pid (\d+)\) in loop:(\S+)", started.stdout)
    run_id, pid, run_dir = match.group(1), int(match.group(2)), match.group(3)
    assert run_dir == posixpath.join(str(sshd.workdir), "runs", "tiny", run_id)
    assert f"ban follow tiny/{run_id} --host loop" in started.stdout
    assert operations.find_remote_run(host, run_id[:15]) == run_dir

    source, seen, kills, flips = RemoteSource(host, run_dir, pid=pid, timeout=5), [], [], []
    source.on_connection = lambda s: flips.append(s.connected)
    wait_until(lambda: held(run_dir), 240, "the run held after its first epoch")
    busy = gpus.gpu_status(host)      # the running run shows in the host's status
    assert busy.gpus is None and run_dir in [r.dir for r in busy.runs]

    thread = threading.Thread(target=sshd.sabotage, args=(3, 0.8, 1.0, kills))
    thread.start()
    while thread.is_alive():          # connections dropped and the server down while the run is held
        seen += source.poll()
        time.sleep(0.05)
    gate.unlink()
    deadline = time.monotonic() + 240
    while not source.ended() and time.monotonic() < deadline:
        seen += source.poll()
        time.sleep(0.05)
    seen += source.poll()
    events_file = Path(run_dir) / "events.jsonl"
    assert source.ended() and sum(kills) >= 1 and source.drops >= 1 and False in flips
    assert seen == read_events(events_file)                        # each event once, none lost
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["kind"] == "run_end" and seen[-1]["status"] == "ok"   # the run went on
    assert source.status() == "ok" and sorted(source.state.gens) == [0, 1]

    again = RemoteSource(host, run_dir)                     # reattach: the whole history
    assert again.poll() == seen and again.ended()
    followed = ban("follow", run_id, "--host", "loop", "--config", "tiny.toml", cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr
    assert f"tiny/{run_id} ended ok" in followed.stdout and f"tiny/{run_id} BAN-1 done" in followed.stdout

    [listed] = [r for r in operations.list_remote_runs(host) if r.dir == run_dir]
    assert listed.status == "ok" and listed.state.gens[1].final == source.state.gens[1].final
    ls = ban("ls", "--host", "loop", "--config", "tiny.toml", cwd=tmp_path)
    assert ls.returncode == 0 and re.search(rf"tiny/{run_id}\s+ok\s+4/4", ls.stdout), ls.stdout + ls.stderr

    pulled = ban("pull", run_id[:15], "--host", "loop", "--config", "tiny.toml", "--runs-dir", "local", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    local = tmp_path / "local" / "tiny" / run_id
    assert read_events(local / "events.jsonl") == seen
    assert (local / "checkpoints" / "gen-1.pt").read_bytes() == (Path(run_dir) / "checkpoints" / "gen-1.pt").read_bytes()
    state = load_state(local)
    assert state.status() == "ok" and state.ensembles[1]["test_err"] == source.state.ensembles[1]["test_err"]
    by_scp = operations.pull(host, run_dir, tmp_path / "scp-runs", use_rsync=False)
    assert sorted(p.relative_to(by_scp) for p in by_scp.rglob("*")) == sorted(p.relative_to(local) for p in local.rglob("*"))
    (by_scp / "stale-file").write_text("from an older pull")
    assert operations.pull(host, run_dir, tmp_path / "scp-runs", use_rsync=False) == by_scp   # replaces it
    assert not (by_scp / "stale-file").exists() and (by_scp / "results.json").exists()
    assert [p.name for p in (tmp_path / "scp-runs" / "tiny").iterdir()] == [run_id]      # no temp left

    report = ban("report", "--runs-dir", "local", "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["experiments"], report.stdout


def test_ban_hosts_shows_gpus_no_gpu_and_unreachable(sshd, tmp_path):
    (tmp_path / "ban").mkdir()
    (tmp_path / "ban" / "hosts.toml").write_text(
        f'[hosts.loop]\nssh = "loop"\npython = "{sys.executable}"\n'
        f'[hosts.loopgpu]\nssh = "loopgpu"\n[hosts.closed]\nssh = "closed"\n')
    config = tmp_path / "ssh_config"
    config.write_text(Path(os.environ["BAN_SSH_CONFIG"]).read_text() + "Host closed\n  HostName 127.0.0.1\n  Port 1\n")
    result = ban("hosts", cwd=tmp_path, timeout=60,
                 env=cli_env(COLUMNS="250", XDG_CONFIG_HOME=str(tmp_path), BAN_SSH_CONFIG=str(config)))
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines() if line.strip()]
    at = {line.split()[0]: i for i, line in enumerate(lines)}
    assert "no NVIDIA GPU" in lines[at["loop"]]
    assert "2 GPUs 0 NVIDIA H100 80GB HBM3 37% 1.0/79.6 GiB" in lines[at["loopgpu"]]
    assert lines[at["loopgpu"] + 1] == "1 NVIDIA H100 80GB HBM3 - 78.1/79.6 GiB"
    assert "unreachable: ssh: connect to host 127.0.0.1 port 1: Connection refused" in lines[at["closed"]]


# ---- the TUI's hosts tab ----------------------------------------------------------------------

async def test_tui_hosts_tab_shows_gpus_and_follows_a_hosts_running_run(sshd, tmp_path, monkeypatch):
    from ban_tui.app import BanApp
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))   # no user hosts file
    config = tmp_path / "experiments.toml"
    config.write_text(f'[[experiment]]\nname = "a"\n[hosts.loop]\nssh = "loop"\nworkdir = "{sshd.workdir}"\n'
                      f'python = "{sys.executable}"\n[hosts.loopgpu]\nssh = "loopgpu"\n')
    host, n = sshd.host(), 250
    rdir = posixpath.join(operations.remote_runs_dir(host), "tui", "r1")
    transport.run_checked(host, (
        f"mkdir -p {transport.rpath(rdir)} || exit 1; setsid nohup {transport.rpath(host.python)} -c {shlex.quote(WRITER)} "
        f"{transport.rpath(rdir + '/events.jsonl')} {n} < /dev/null > /dev/null 2>&1 &"), "start the writer")

    app = BanApp(config, tmp_path / "runs", initial="hosts")
    async with app.run_test(size=(150, 30)) as pilot:
        table = app.main_screen.query_one("#hosts-table")

        async def until(predicate, what, timeout=30.0):
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {[cells(k) for k in table.row_keys()]}"
                await pilot.pause(0.05)

        def cells(key):
            return [str(c) for c in table.get_row(key)] if key in table.row_keys() else []

        await until(lambda: "tui/r1" in " ".join(cells("loop#0")), "the running run on loop")
        assert cells("loop#0")[:3] == ["loop", "loop", "no NVIDIA GPU"]
        assert cells("loopgpu#0")[2:6] == ["2 GPUs", "0 NVIDIA H100 80GB HBM3", "37%", "1.0/79.6 GiB"]
        assert cells("loopgpu#1")[3:6] == ["1 NVIDIA H100 80GB HBM3", "-", "78.1/79.6 GiB"]

        table.focus()
        table.move_cursor(row=table.row_keys().index("loop#0"))
        await pilot.press("enter")                            # follow loop's running runs
        key = Path(rdir).resolve()
        await until(lambda: key in app.watcher.models, "the run in the watcher")
        model = app.watcher.models[key]
        assert isinstance(model.source, RemoteSource)
        await until(lambda: model.state.n_events == n, "every event", timeout=60)
        assert app.main_screen.query_one("#panels").active == "runs"
        assert str(key) in app.main_screen.query_one("#runs-table").row_keys()
    model.source.stop()
    assert model.state.last_seq == n and model.state.n_events == len(read_events(Path(rdir) / "events.jsonl"))
