"""The launcher and the followers with real processes: argv building, following a run that a
separate process is writing (each event once, in order), a writer that dies without run_end,
and cancel never signalling a process that is not the run's engine."""
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine.events import read_events
from engine.runs import RunPaths, load_state, process_start_time
from ban_tui import launch
from ban_tui.follow import LocalSource, follow

WRITER = textwrap.dedent("""
    import sys, time
    from engine.events import EventWriter
    from engine.runs import process_start_time
    import os
    root, n, end = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    w = EventWriter(root + "/events.jsonl", "r1")
    w.emit("run_start", experiment="exp", pid=os.getpid(), pid_start=process_start_time(os.getpid()), seed=0)
    w.emit("gen_start", gen=0, role="teacher", objective="ce", model="cnn-small", params=10, teacher=None, epochs=n)
    for e in range(1, n + 1):
        w.emit("epoch", gen=0, epoch=e, epochs=n, train_loss=1.0 / e, test_err=0.5 / e, lr=0.1, seconds=0.01)
        time.sleep(0.02)
    if end == "hang":
        time.sleep(60)
    if end == "ok":
        w.emit("run_end", status="ok", error=None)
""")


def test_engine_command_argv(tmp_path):
    argv = launch.engine_command(tmp_path / "e.toml", "quick", 3, tmp_path / "runs", "rid", None, 1, "py")
    assert argv == ["py", "-m", "engine", "run", str(tmp_path / "e.toml"), "--experiment", "quick", "--seed", "3",
                    "--runs-dir", str(tmp_path / "runs"), "--run-id", "rid"]
    argv = launch.engine_command("e.toml", "quick", 0, "runs", "rid", "cuda:1", 4, "py")
    assert argv[:7] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m"]
    assert argv[7:9] == ["engine", "run"] and argv[-2:] == ["--device", "cuda:1"]
    assert launch.resume_command("runs/a/b", 1, "py") == ["py", "-m", "engine", "resume", "runs/a/b"]


def start_writer(root, n, end):
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), end])


def test_follow_delivers_each_event_once_in_order(tmp_path):
    root = tmp_path / "runs" / "exp" / "r1"
    proc = start_writer(root, 40, "ok")
    source = LocalSource(root, proc.pid)
    seen = []
    follow([source], lambda s, events: seen.extend(events), interval=0.01)
    proc.wait()
    on_disk = read_events(RunPaths(root).events)
    assert [e["seq"] for e in seen] == list(range(1, 44)) == [e["seq"] for e in on_disk]
    assert seen == on_disk
    assert source.state.status() == "ok" and source.state.gens[0].epoch == 40
    assert source.name == "exp/r1"


def test_follow_ends_when_the_writer_dies_without_run_end(tmp_path):
    root = tmp_path / "exp" / "r1"
    proc = start_writer(root, 3, "hang")
    deadline = time.time() + 30
    while len(read_events(RunPaths(root).events)) < 5 and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    source = LocalSource(root)  # a later viewer: knows the pid only from run_start
    seen = []
    follow([source], lambda s, events: seen.extend(events), interval=0.01)
    assert len(seen) == 5
    assert source.state.status() == "dead" and source.ended()


def fake_engine(*argv):
    """A real process whose command line reads like an engine's: `python -c SLEEP -m engine ...`."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "engine", *argv])


def test_cancel_never_signals_a_process_that_is_not_the_engine(tmp_path):
    root = tmp_path / "exp" / "r1"
    root.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    other = fake_engine("run", "e.toml", "--experiment", "exp", "--run-id", "r2")   # another run's engine
    engine = fake_engine("run", "e.toml", "--experiment", "exp", "--run-id", "r1")
    procs = (sleeper, other, engine)
    try:
        start = process_start_time(sleeper.pid)
        # a recycled pid: the same number, another start time
        from engine.events import EventWriter
        w = EventWriter(RunPaths(root).events, "r1")
        w.emit("run_start", experiment="exp", pid=sleeper.pid, pid_start=start + 1, seed=0)
        w.close()
        # a pid file without a start time pointing at a process that is not the engine
        RunPaths(root).pid.write_text(f"{sleeper.pid}\n")
        with pytest.raises(launch.LaunchError, match="no live engine process"):
            launch.cancel(root)
        assert launch.running_pid(root) is None
        # the right start time but not an engine (its command line says so): not signalled
        # either; nor is an engine whose command line names another run
        for p in (sleeper, other):
            w = EventWriter(RunPaths(root).events, "r1")
            w.emit("run_start", experiment="exp", pid=p.pid, pid_start=process_start_time(p.pid), seed=0)
            w.close()
            RunPaths(root).pid.write_text(f"{p.pid} {process_start_time(p.pid)}\n")
            with pytest.raises(launch.LaunchError, match="no live engine process"):
                launch.cancel(root)
            with pytest.raises(launch.LaunchError, match="no live engine process"):
                launch.cancel(load_state(root))
        time.sleep(0.2)
        assert sleeper.poll() is None and other.poll() is None  # still alive: nothing was sent
        # this run's engine: right start time, command line naming engine and r1
        w = EventWriter(RunPaths(root).events, "r1")
        w.emit("run_start", experiment="exp", pid=engine.pid, pid_start=process_start_time(engine.pid), seed=0)
        w.close()
        RunPaths(root).pid.write_text(f"{engine.pid} {process_start_time(engine.pid)}\n")
        assert launch.running_pid(root) == engine.pid
        assert "sent SIGTERM" in launch.cancel(load_state(root))  # a view's RunState works too
        assert engine.wait(timeout=10) == -signal.SIGTERM
        assert sleeper.poll() is None and other.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_launch_failure_is_captured_in_the_run_dir(tmp_path):
    """An interpreter that cannot start the engine: the run dir holds its stderr and the
    follower ends (the launcher returned at once with a pid)."""
    from engine.spec import loads
    cfg = tmp_path / "e.toml"
    cfg.write_text('[[experiment]]\nname = "quick"\n')
    exp = loads(cfg.read_text(), str(cfg)).experiments["quick"]
    bad_python = tmp_path / "python"
    bad_python.write_text("#!/bin/sh\necho 'no engine here' >&2\nexit 3\n")
    bad_python.chmod(0o755)
    r = launch.launch_local(cfg, exp, 5, tmp_path / "runs", python=str(bad_python))
    assert r.run_dir == (tmp_path / "runs" / "quick" / r.run_id) and "-s5-" in r.run_id
    source = LocalSource(r.run_dir, r.pid, r.pid_start)
    follow([source], lambda s, e: None, interval=0.01)
    assert RunPaths(r.run_dir).stderr.read_text() == "no engine here\n"
    assert source.ended() and source.state.end is None
