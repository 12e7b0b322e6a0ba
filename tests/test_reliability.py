"""Issue 14 with real processes: one writer per run (two engines racing on one run id, again
and again), `ban run` cancelling on SIGINT piped through tee and as a script's background job,
and the states a run directory can be left in (starting, broken, a truncated checkpoint, a
directory made read-only mid-run, .tmp leftovers).

Tiny digits runs, one thread per process. A racing pair is stopped (SIGKILL) while the winner
still imports torch, so the twenty rounds cost little; the last round runs to the end.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import checkpoint
from engine.events import read_events
from engine.runs import RunPaths, list_runs, load_state, pid_alive, process_start_time
from ban_tui import launch
from helpers import held, hold

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
ENV.pop("BAN_DEBUG", None)
BAN = [sys.executable, "-m", "ban_tui.cli"]

CONFIG = """
[[experiment]]
name = "tiny"
dataset = {{ name = "digits", augment = false }}
model = "cnn-small"
generations = {generations}
epochs = {epochs}
batch_size = 128
device = "cpu"
"""


def config(tmp_path, epochs=1, generations=0) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.format(epochs=epochs, generations=generations))
    return f


def engine(cwd, *args, pre=()) -> subprocess.Popen:
    err = open(cwd / f"err-{time.monotonic_ns()}.log", "w+b")
    proc = subprocess.Popen([*pre, sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    proc.err = err
    return proc


def stderr_of(proc) -> str:
    proc.err.seek(0)
    return proc.err.read().decode()


def wait_until(predicate, timeout=180.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gate(tmp_path) -> Path:
    """Hold every run of "tiny" after each epoch (helpers.hold): running by construction."""
    return hold(tmp_path / "runs" / "tiny")


def kill(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# ---- one writer per run -----------------------------------------------------------------------

RACES = 20


def race(cwd, root, commands) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Start two engines on one run directory at once; (winner, loser) once the loser exited."""
    a, b = (engine(cwd, *c) for c in commands)
    wait_until(lambda: a.poll() is not None or b.poll() is not None, 120, "one engine to give up")
    loser, winner = (a, b) if a.poll() is not None else (b, a)
    assert loser.returncode == 2, stderr_of(loser)
    message = stderr_of(loser)
    assert message == (f"error: run {root} is already being written by pid {winner.pid} "
                       f"(host {socket.gethostname()})\n"), message
    return winner, loser


def test_two_engines_racing_on_one_run_id_leave_exactly_one_writer(tmp_path):
    """Twenty rounds of two engines started together on one run id (run+run, resume+resume,
    run+resume): each time exactly one takes the run, the other exits 2 naming it and touches
    nothing. Each round's winner is SIGKILLed holding the lock: its stale lock never blocks the
    next round. The last round's winner runs to the end: one run_start, one run_end, every seq once,
    and the .tmp files a killed writer left are gone."""
    cfg = config(tmp_path)
    root = Path("runs") / "tiny" / "same"
    (tmp_path / root).mkdir(parents=True)   # as `ban run` makes it
    run = ("run", cfg.name, "--experiment", "tiny", "--runs-dir", "runs", "--run-id", "same")
    resume = ("resume", root)
    pairs = [(run, run), (resume, resume), (run, resume), (resume, run)]
    for i in range(RACES - 1):
        winner, loser = race(tmp_path, root, pairs[i % len(pairs)])
        assert winner.poll() is None   # it holds the run...
        assert (tmp_path / root / "lock").read_text().split()[0] == str(winner.pid)
        kill(winner)                   # ...and dies with it, SIGKILL: the kernel drops the lock
        assert read_events(tmp_path / root / "events.jsonl") == []   # neither got to write events
    (tmp_path / root / "checkpoints").mkdir()
    leftovers = [tmp_path / root / "experiment.toml.tmp", tmp_path / root / "checkpoints" / "gen-0.pt.tmp"]
    for f in leftovers:
        f.write_bytes(b"half a file")
    winner, loser = race(tmp_path, root, (run, run))
    try:
        assert winner.wait(timeout=240) == 0, stderr_of(winner)
    finally:
        kill(winner)
    events = read_events(tmp_path / root / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["kind"] for e in events]
    assert kinds.count("run_start") == 1 and kinds.count("run_end") == 1 and events[-1]["status"] == "ok"
    assert events[0]["pid"] == winner.pid
    assert not any(f.exists() for f in leftovers)


def test_a_forked_child_of_the_engine_never_keeps_the_run_locked(tmp_path):
    """A DataLoader worker is a fork of its engine and shares the lock's open file: it drops its
    copy at the fork, so once the engine lets go (or dies) the run is free, whatever the worker does."""
    from engine import lock
    held_lock = lock.acquire(tmp_path)
    child = os.fork()
    if child == 0:            # the worker: outlives the engine's hold on the lock
        time.sleep(30)
        os._exit(0)
    try:
        held_lock.release()   # the engine lets go (as when it dies)
        other = subprocess.run([sys.executable, "-c", "from pathlib import Path; from engine import lock; "
                                f"lock.acquire(Path({str(tmp_path)!r})); print('free')"],
                               capture_output=True, text=True, timeout=60, env=ENV)
        assert other.stdout.strip() == "free", other.stderr
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_resume_of_a_run_being_written_exits_2_and_changes_nothing(tmp_path):
    cfg = config(tmp_path, epochs=30)
    root = tmp_path / "runs" / "tiny" / "busy"
    root.mkdir(parents=True)
    gate(tmp_path)
    first = engine(tmp_path, "run", cfg.name, "--experiment", "tiny", "--runs-dir", "runs", "--run-id", "busy")
    try:
        wait_until(lambda: held(root), what="the run held after its first epoch")
        before = (root / "events.jsonl").read_bytes()
        second = engine(tmp_path, "resume", root)
        assert second.wait(timeout=120) == 2
        assert f"is already being written by pid {first.pid}" in stderr_of(second)
        assert (root / "events.jsonl").read_bytes()[:len(before)] == before
        # `ban resume` says so up front
        result = subprocess.run(BAN + ["resume", str(root)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1 and f"still running (pid {first.pid})" in result.stderr, result.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0
    finally:
        kill(first)
    kinds = [e["kind"] for e in read_events(root / "events.jsonl")]
    assert kinds.count("run_start") == 1 and kinds[-1] == "run_end"
    assert load_state(root).end["status"] == "cancelled"


# ---- ban run cancels on signals in every setting ----------------------------------------------

def the_run(tmp_path) -> Path:
    """The one run of a test that has set gate(tmp_path), once it is held after its first epoch."""
    wait_until(lambda: list_runs(tmp_path / "runs") and held(list_runs(tmp_path / "runs")[0]),
               what="the run held after its first epoch")
    (root,) = list_runs(tmp_path / "runs")
    return root


def assert_cancelled_and_resumable(root):
    state = load_state(root)
    assert state.end["status"] == "cancelled", state.end
    assert RunPaths(root).last_checkpoint.exists() or RunPaths(root).gen_checkpoint(0).exists()
    assert launch.running_pid(root) is None


def test_ctrl_c_through_tee_cancels(tmp_path):
    """`ban run c.toml | tee out.log` and Ctrl-C: the terminal signals the whole foreground group,
    so tee dies at once and `ban run` writes into a closed pipe; it still cancels its engine."""
    config(tmp_path, epochs=40)
    gate(tmp_path)
    ban = subprocess.Popen(BAN + ["run", "c.toml", "--runs-dir", "runs"], cwd=tmp_path, env=ENV,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           process_group=0)   # the pipeline's own group, as a shell's job
    tee = subprocess.Popen(["tee", str(tmp_path / "out.log")], stdin=ban.stdout, stdout=subprocess.DEVNULL,
                           process_group=ban.pid)
    ban.stdout.close()   # tee is the pipe's only reader
    try:
        root = the_run(tmp_path)
        os.killpg(ban.pid, signal.SIGINT)   # Ctrl-C
        assert tee.wait(timeout=30) == -signal.SIGINT
        assert ban.wait(timeout=180) == 130, ban.stderr.read().decode()
    finally:
        kill(ban, tee)
    assert "Traceback" not in ban.stderr.read().decode()
    assert_cancelled_and_resumable(root)
    assert "started tiny/" in (tmp_path / "out.log").read_text()


def test_sigterm_to_ban_run_cancels(tmp_path):
    """`kill PID` (SIGTERM) of a following `ban run`: the same graceful cancel as Ctrl-C."""
    config(tmp_path, epochs=40)
    gate(tmp_path)
    ban = subprocess.Popen(BAN + ["run", "c.toml", "--runs-dir", "runs"], cwd=tmp_path, env=ENV,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        root = the_run(tmp_path)
        ban.send_signal(signal.SIGTERM)
        out, err = ban.communicate(timeout=180)
    finally:
        kill(ban)
    assert ban.returncode == 130 and "Traceback" not in err, out + err
    assert f"resume with: ban resume {root}" in out
    assert_cancelled_and_resumable(root)


def test_sigint_to_a_background_ban_run_of_a_script_cancels_and_resume_finishes(tmp_path):
    """A script's `ban run ... &` starts with SIGINT ignored; `kill -INT` still cancels it (and
    SIGTERM would too). Then `ban resume` continues the run to the end."""
    config(tmp_path, epochs=6)
    held_here = gate(tmp_path)
    script = (" ".join(BAN) + " run c.toml --runs-dir runs > out.log 2>&1 &\n"
              "echo $! > ban.pid\nwait $!\necho $? > ban.rc\n")
    shell = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_until(lambda: (tmp_path / "ban.pid").exists() and (tmp_path / "ban.pid").read_text().strip(),
                   what="the background job's pid")
        pid = int((tmp_path / "ban.pid").read_text())
        # The shell started it as a background job: SIGINT and SIGQUIT ignored. (SIGINT shows
        # as caught once `ban run` installed its handler; SIGQUIT stays ignored.)
        with open(f"/proc/{pid}/status") as f:
            ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (signal.SIGQUIT - 1))
        root = the_run(tmp_path)
        os.kill(pid, signal.SIGINT)
        assert shell.wait(timeout=180) == 0
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    assert (tmp_path / "ban.rc").read_text().strip() == "130", (tmp_path / "out.log").read_text()
    assert "Traceback" not in (tmp_path / "out.log").read_text()
    assert_cancelled_and_resumable(root)
    held_here.unlink()
    done = subprocess.run(BAN + ["resume", str(root)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    events = read_events(RunPaths(root).events)
    assert events[-1]["status"] == "ok"
    assert [e["epoch"] for e in events if e["kind"] == "epoch"] == list(range(1, 7))


# ---- run states -------------------------------------------------------------------------------

def ban_out(tmp_path, *args):
    return subprocess.run(BAN + list(args), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)


def test_starting_then_broken_when_killed_before_its_first_event_and_resume_starts_it_over(tmp_path):
    """A launched engine: `starting` until its first event; SIGKILLed before it, the directory
    (which holds the snapshot from the submit on) is `broken` with the reason in `ban ls`, and
    `ban resume` starts the chain over from the snapshot to the end."""
    from engine import spec
    cfg = config(tmp_path)
    exp = spec.load(cfg).experiments["tiny"]
    r = launch.launch_local(cfg, exp, 0, tmp_path / "runs")
    try:
        assert load_state(r.run_dir).status() == "starting"   # the launcher's pid file: alive
        os.kill(r.pid, signal.SIGKILL)   # at once: the engine is still importing torch
        wait_until(lambda: pid_alive(r.pid, r.pid_start) is False, what="the engine's death")
    finally:
        if pid_alive(r.pid, r.pid_start):
            os.kill(r.pid, signal.SIGKILL)
    state = load_state(r.run_dir)
    assert state.status() == "broken" and "no events" in state.broken_reason
    ls = ban_out(tmp_path, "ls", "--runs-dir", "runs")
    assert "broken" in ls.stdout and "no events: the engine stopped before its first event" in ls.stdout, ls.stdout
    resume = ban_out(tmp_path, "resume", str(r.run_dir))
    assert resume.returncode == 0 and "ended ok" in resume.stdout, resume.stdout + resume.stderr
    assert load_state(r.run_dir).status() == "ok"


def test_a_directory_left_without_its_snapshot_is_broken_and_resume_refuses_it(tmp_path):
    """What a crash while creating a run leaves: a pid file of a dead process and no
    experiment.toml. Broken, with the reason; `ban resume` refuses it naming the file."""
    config(tmp_path)
    root = tmp_path / "runs" / "tiny" / "r1"
    root.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "30"])
    pid_start = process_start_time(proc.pid)
    kill(proc)
    (root / "pid").write_text(f"{proc.pid} {pid_start}\n")
    state = load_state(root)
    assert state.status() == "broken" and "no experiment.toml" in state.broken_reason
    ls = ban_out(tmp_path, "ls", "--runs-dir", "runs")
    assert "broken" in ls.stdout and "no experiment.toml" in ls.stdout, ls.stdout
    resume = ban_out(tmp_path, "resume", str(root))
    assert resume.returncode == 1 and "no experiment.toml" in resume.stderr, resume.stderr


def test_empty_events_file_is_starting_while_alive_then_broken(tmp_path):
    root = tmp_path / "runs" / "tiny" / "r1"
    root.mkdir(parents=True)
    (root / "events.jsonl").touch()
    (root / "experiment.toml").write_text("")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "engine", "run"])
    try:
        (root / "pid").write_text(f"{proc.pid} {process_start_time(proc.pid)}\n")
        assert load_state(root).status() == "starting"
        assert "starting" in ban_out(tmp_path, "ls", "--runs-dir", "runs").stdout
    finally:
        kill(proc)
    assert load_state(root).status() == "broken"   # never "running" forever
    ls = ban_out(tmp_path, "ls", "--runs-dir", "runs").stdout
    assert "broken" in ls and "no events" in ls, ls
    (root / "pid").unlink()   # no pid file at all: broken once the directory is not new
    os.utime(root, (time.time() - 3600, time.time() - 3600))
    assert load_state(root).status() == "broken"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished teacher + one student run (one epoch each)."""
    cwd = tmp_path_factory.mktemp("finished")
    cfg = config(cwd, epochs=1, generations=1)
    proc = engine(cwd, "run", cfg.name, "--experiment", "tiny", "--runs-dir", "runs", "--run-id", "done")
    assert proc.wait(timeout=240) == 0, stderr_of(proc)
    return cwd / "runs" / "tiny" / "done"


def test_truncated_teacher_checkpoint_is_one_line_naming_the_file(finished, tmp_path):
    """The run as if killed after the teacher: gen-0.pt then cut in half. Resuming fails with one
    line naming gen-0.pt (no PyTorch message on its own, no traceback), exit 1, run_end failed."""
    root = tmp_path / "tiny" / "done"
    shutil.copytree(finished, root)
    events = read_events(RunPaths(root).events)
    cut = next(i for i, e in enumerate(events) if e["kind"] == "gen_end" and e["gen"] == 0)
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[:cut + 1]))
    for f in (RunPaths(root).gen_checkpoint(1), RunPaths(root).results):
        f.unlink()
    gen0 = RunPaths(root).gen_checkpoint(0)
    gen0.write_bytes(gen0.read_bytes()[: gen0.stat().st_size // 2])
    proc = engine(tmp_path, "resume", root)
    assert proc.wait(timeout=240) == 1
    err = stderr_of(proc)
    assert err.count("\n") == 1 and err.startswith("error: ") and f"{gen0}: cannot read the checkpoint" in err, err
    assert load_state(root).end["status"] == "failed" and str(gen0) in load_state(root).end["error"]


def test_truncated_probabilities_name_the_file(finished, tmp_path):
    probs = tmp_path / "gen-1.npy"
    data = RunPaths(finished).gen_probs(1).read_bytes()
    assert np.load(RunPaths(finished).gen_probs(1)).size   # the real file loads
    probs.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.FileError, match=f"^{probs}: cannot read the probabilities"):
        checkpoint.load_npy(probs)
    with pytest.raises(checkpoint.FileError, match="cannot read the checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")


def read_only_runner():
    """Root writes into any directory: drop that power (CAP_DAC_OVERRIDE) for the engine."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: a read-only directory stays writable")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


def test_run_directory_made_read_only_mid_run(tmp_path):
    pre = read_only_runner()
    cfg = config(tmp_path, epochs=30)
    root = tmp_path / "runs" / "tiny" / "ro"
    root.mkdir(parents=True)
    held_here = gate(tmp_path)
    proc = engine(tmp_path, "run", cfg.name, "--experiment", "tiny", "--runs-dir", "runs", "--run-id", "ro", pre=pre)
    try:
        wait_until(lambda: held(root), what="the run held after its first epoch")
        for d in (root, root / "checkpoints"):
            if d.exists():
                d.chmod(0o555)
        held_here.unlink()   # the next epoch's checkpoint cannot be written
        assert proc.wait(timeout=240) == 1
    finally:
        kill(proc)
        for d in (root, root / "checkpoints"):
            if d.exists():
                d.chmod(0o755)
    err = stderr_of(proc)
    assert err.count("\n") == 1 and "Permission denied" in err and "Traceback" not in err, err
    end = read_events(RunPaths(root).events)[-1]
    assert end["kind"] == "run_end" and end["status"] == "failed" and "Permission denied" in end["error"]
