"""`ban cancel / resume / rm` here and with --host, against a real OpenSSH server on 127.0.0.1
(tests/sshd.py), on a real digits chain; and the follow command `ban run --host` prints, run
exactly as printed."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from engine.events import EventWriter, read_events
from engine.runs import RunPaths, process_start_time
from ban_tui.host import control as host_control
from ban_tui.remote import control as remote_control
from ban_tui.remote.transport import RemoteError
import helpers
from helpers import BAN, digits_chain, held, hold, loop_host, wait_until
from helpers import cli_env as env
from sshd import sshd  # noqa: F401  (the fixture; tests/ is on sys.path)

# Held after its first epoch (helpers.hold) until the test has cancelled it, then resumed to the end.
def chain(workdir) -> str:
    return digits_chain("ctl", epochs=3, batch_size=64, generations=2, seeds=[5], device="cpu", host="loop") \
        + loop_host(workdir)



def ban(*args, cwd, timeout=300):
    return helpers.ban(*args, cwd=cwd, timeout=timeout)


def wait_for(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what, step=0.2)


def kinds(run_dir: Path) -> list[tuple]:
    return [(e["kind"], e.get("status")) for e in read_events(run_dir / "events.jsonl")
            if e["kind"] in ("run_start", "run_end")]


def test_cancel_resume_rm_on_a_host_and_the_printed_follow_command(sshd, tmp_path):
    (tmp_path / "chain.toml").write_text(chain(sshd.workdir))
    gate = hold(Path(sshd.workdir) / "runs" / "ctl")
    started = ban("run", "chain.toml", "--detach", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    run_dir = Path(re.search(r"started ctl/\S+ \(pid \d+\) in loop:(\S+)", started.stdout).group(1))
    assert run_dir.parent == gate.parent
    follow_line = next(ln for ln in started.stdout.splitlines() if ln.startswith("follow with: "))
    follow_cmd = follow_line[len("follow with: "):]
    # the host is one of chain.toml's [hosts], which `ban follow` does not read by default
    assert follow_cmd == f"ban follow ctl/{run_dir.name} --host loop --config chain.toml"
    ref = f"ctl/{run_dir.name}"
    wait_for(lambda: held(run_dir), 240, "the chain held after its first epoch")

    refused = ban("rm", ref, "--host", "loop", "--config", "chain.toml", cwd=tmp_path)
    assert refused.returncode == 1 and "is running (pid" in refused.stderr and run_dir.is_dir()

    cancelled = ban("cancel", ref, "--host", "loop", "--config", "chain.toml", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert re.search(rf"sent SIGTERM to {re.escape(ref)} \(pid \d+\); {re.escape(ref)}: cancelled", cancelled.stdout)
    assert kinds(run_dir) == [("run_start", None), ("run_end", "cancelled")]
    assert (RunPaths(run_dir).checkpoints / "last.pt").exists()

    again = ban("cancel", ref, "--host", "loop", "--config", "chain.toml", cwd=tmp_path)
    assert again.returncode == 1 and "already ended cancelled; nothing to cancel" in again.stderr

    gate.unlink()
    resumed = ban("resume", ref, "--host", "loop", "--config", "chain.toml", "--detach", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(rf"resumed {re.escape(ref)} \(pid \d+\) in loop:{re.escape(str(run_dir))}", resumed.stdout)
    assert follow_cmd in resumed.stdout        # the same follow command, again

    # The printed command, exactly as printed, through a shell, from the directory it was printed in.
    followed = subprocess.run(follow_cmd, shell=True, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env())
    assert followed.returncode == 0, followed.stderr
    assert kinds(run_dir) == [("run_start", None), ("run_end", "cancelled"), ("run_start", None), ("run_end", "ok")]
    assert "BAN-1" in followed.stdout

    listed = ban("ls", "--host", "loop", "--config", "chain.toml", cwd=tmp_path)
    assert listed.returncode == 0 and run_dir.name in listed.stdout and " ok " in listed.stdout

    removed = ban("rm", ref, "--host", "loop", "--config", "chain.toml", cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"removed {ref} (ok)"
    assert not run_dir.exists() and not run_dir.parent.exists()
    gone = ban("ls", "--host", "loop", "--config", "chain.toml", cwd=tmp_path)
    assert "no runs on loop" in gone.stdout


def fake_run(runs: Path, name: str, end: str | None) -> Path:
    """A run directory in the engine's own format (EventWriter), ended `end` or still going."""
    root = runs / "exp" / name
    root.mkdir(parents=True)
    RunPaths(root).snapshot.write_text('[[experiment]]\nname = "exp"\n')
    w = EventWriter(RunPaths(root).events, name)
    w.emit("run_start", experiment="exp", seed=0, pid=None, pid_start=None)
    if end:
        w.emit("run_end", status=end, error=None)
    w.close()
    return root


def test_rm_here_refuses_a_live_engine_and_takes_a_queued_run_out_of_the_queue(tmp_path):
    runs = tmp_path / "runs"
    done = fake_run(runs, "20260101-000000-s0-aaaa", "failed")
    live = fake_run(runs, "20260101-000001-s0-bbbb", None)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:   # its pid file names a live process (pid and start time): the run counts as running
        RunPaths(live).pid.write_text(f"{sleeper.pid} {process_start_time(sleeper.pid)}\n")
        out = subprocess.run([BAN, "rm", "exp/20260101-000001-s0-bbbb", "exp/20260101-000000-s0-aaaa",
                              "--runs-dir", str(runs)], capture_output=True, text=True, env=env(), timeout=60)
        assert out.returncode == 1
        assert f"is running (pid {sleeper.pid}); cancel it first" in out.stderr
        assert out.stdout.strip() == "removed exp/20260101-000000-s0-aaaa (failed)"
        assert live.is_dir() and not done.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    queued = runs / "exp" / "20260101-000002-s0-cccc"
    queued.mkdir()
    RunPaths(queued).snapshot.write_text('[[experiment]]\nname = "exp"\n')
    (queued / host_control.QUEUED).write_text("")
    assert host_control.rm_here(queued) == "removed exp/20260101-000002-s0-cccc from the queue"
    assert not queued.exists()
    assert [p.name for p in (runs / "exp").iterdir()] == [live.name]   # no temp directory left


def test_rm_on_a_host_removes_a_queued_run(sshd, tmp_path):
    host = sshd.host()
    queued = sshd.workdir / "runs" / "q" / "20260101-000003-s0-dddd"
    queued.mkdir(parents=True)
    RunPaths(queued).snapshot.write_text('[[experiment]]\nname = "q"\n')
    (queued / host_control.QUEUED).write_text("")
    answer = remote_control.control(host, "rm", "20260101-000003")
    assert answer["message"] == "removed q/20260101-000003-s0-dddd from the queue" and not queued.exists()
    with pytest.raises(RemoteError, match=r"host 'loop': rm nope failed: error: no run matches 'nope' under "):
        remote_control.control(host, "rm", "nope")
