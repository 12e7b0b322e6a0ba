"""GPU/CPU slots and the queue of a runs directory (engine/scheduler.py), with real processes:
real engines training tiny digits chains, a real detached scheduler, SIGKILLed launchers and
schedulers, a fake nvidia-smi on PATH, and the loopback sshd (tests/sshd.py)."""
from __future__ import annotations

import json
import pytest
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import scheduler
from engine.events import read_events
from engine.runs import pid_alive
from sshd import sshd  # noqa: F401  (the fixture; tests/ is on sys.path)

from helpers import BAN, cli_env, held, hold, wait_until as wait_for
from helpers import ban as run_ban


def env() -> dict:   # read at each call: the sshd fixture sets BAN_SSH_CONFIG
    return cli_env(BAN_SCHEDULE_INTERVAL="0.2")

CHAINS = """
[defaults]
runs_dir = "runs"

[[experiment]]
name = "q"
dataset = {{ name = "digits" }}
model = "cnn-small"
epochs = {epochs}
batch_size = 256
generations = 0
seeds = {seeds}
{host}
[hosts.{name}]
{ssh}slots = 2
"""


def ban(*args, cwd, timeout=120):
    return run_ban(*args, cwd=cwd, timeout=timeout, env=env())


def ended(root: Path) -> dict | None:
    events = read_events(root / "events.jsonl") if (root / "events.jsonl").exists() else []
    return next((e for e in events if e["kind"] == "run_end"), None)


def kill_scheduler(runs: Path) -> int:
    """SIGKILL the runs directory's scheduler (its pid is in the lock file it holds)."""
    pid = wait_for(lambda: (runs / scheduler.LOCK).exists() and (runs / scheduler.LOCK).read_text().strip(),
                   30, "the scheduler's pid")
    os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not pid_alive(int(pid), None), 10, "the scheduler to die")
    return int(pid)


def check_slots_and_overlap(roots: list[Path], slots: set[str], most: int) -> None:
    """Every run ended ok on one of the slots it recorded, never more than `most` at once."""
    spans = []
    for root in roots:
        events = read_events(root / "events.jsonl")
        start = next(e for e in events if e["kind"] == "run_start")
        assert events[-1]["kind"] == "run_end" and events[-1]["status"] == "ok", (root, events[-1])
        record = json.loads((root / scheduler.SLOT).read_text())
        assert start["slot"] in slots and record["slots"] == [start["slot"]], (start, record)
        assert start["cuda_visible_devices"] is None and record["threads"]   # CPU slots: BAN_THREADS
        spans.append((start["ts"], events[-1]["ts"]))
    at_once = max(sum(a <= t <= b for a, b in spans) for t, _ in spans)
    assert at_once <= most, spans
    assert {json.loads((r / scheduler.SLOT).read_text())["slots"][0] for r in roots} == slots


def test_five_chains_on_two_slots_survive_a_killed_launcher_and_a_killed_scheduler(tmp_path):
    (tmp_path / "q.toml").write_text(CHAINS.format(seeds=[0, 1, 2, 3, 4], epochs=1, host="", name="local", ssh=""))
    runs = tmp_path / "runs"
    gate = hold(runs / "q")      # the first two chains run (held) until the scheduler is killed
    launcher = subprocess.Popen([BAN, "run", "q.toml"], cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(runs.glob("q/*/experiment.toml"))) == 5, 60, "five run directories")
        wait_for(lambda: len(scheduler.queued(runs)) == 3 and (runs / scheduler.LOCK).exists(), 30, "three queued")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    killed = kill_scheduler(runs)
    roots = sorted(p.parent for p in runs.glob("q/*/experiment.toml"))
    started = [r for r in roots if (r / scheduler.SLOT).exists()]
    waiting = [r for r, _ in scheduler.queued(runs)]
    assert len(started) == 2 and len(waiting) == 3 and sorted(started + waiting) == roots
    gate.unlink()
    # the launcher and the scheduler are gone: the running two go on and end; nothing starts the rest
    wait_for(lambda: all(ended(r) for r in started), 120, "the two running chains to end")
    wait_for(lambda: not scheduler.busy_slots(runs), 60, "their processes to exit")
    time.sleep(0.5)
    assert [r for r, _ in scheduler.queued(runs)] == waiting and not any((r / scheduler.SLOT).exists() for r in waiting)

    listed = ban("ls", "--runs-dir", "runs", cwd=tmp_path)   # the next ban command restarts a scheduler
    assert listed.returncode == 0, listed.stderr
    for n, r in enumerate(waiting, 1):
        assert re.search(rf"q/{r.name}\s+queued #{n}\s", listed.stdout), listed.stdout
    assert sum(bool(re.search(r"\sok\s", ln)) for ln in listed.stdout.splitlines()) == 2
    pid_now = lambda: int((runs / scheduler.LOCK).read_text().strip() or 0)  # noqa: E731
    new = wait_for(lambda: pid_now() not in (0, killed) and pid_now(), 30, "a new scheduler")
    wait_for(lambda: all(ended(r) for r in roots), 150, "every chain to end")
    check_slots_and_overlap(roots, {"cpu0", "cpu1"}, 2)
    wait_for(lambda: not pid_alive(new, None), 30, "the scheduler to exit with an empty queue")
    shown = ban("show", waiting[-1].name, "--runs-dir", "runs", cwd=tmp_path)
    assert shown.returncode == 0 and "status ok" in shown.stdout, shown.stdout + shown.stderr


def test_a_resume_takes_a_free_slot_and_is_refused_while_every_slot_is_busy(tmp_path):
    from ban_tui import launch
    (tmp_path / "q.toml").write_text(CHAINS.format(seeds=[0], epochs=6, host="", name="local", ssh="")
                                     .replace("slots = 2", "slots = 1"))
    runs = tmp_path / "runs"
    scheduler.configure(runs, None, 1)
    root = runs / "q" / "r1"
    gate = hold(runs / "q")
    engine = subprocess.Popen([sys.executable, "-m", "engine", "run", "q.toml", "--experiment", "q",
                               "--runs-dir", "runs", "--run-id", "r1"], cwd=tmp_path, env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: held(root), 120, "the run held after its first epoch")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(120) == 0 and ended(root)["status"] == "cancelled"
    gate.unlink()
    # another chain holds the only slot (a live process, recorded as the scheduler records it)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        other = runs / "q" / "other"
        other.mkdir()
        from engine.runs import process_start_time
        scheduler.write_json(other / scheduler.SLOT, {"slots": ["cpu0"], "pid": holder.pid,
                                                      "pid_start": process_start_time(holder.pid)})
        with pytest.raises(launch.LaunchError, match=r"q/r1: no free slot in .*: 1 of 1 busy \(cpu0\)"):
            launch.resume_local(root)
        assert not (root / "pid").exists() or not pid_alive(*map(int, (root / "pid").read_text().split()[:2]))
    finally:
        holder.kill()
        holder.wait()
    run = launch.resume_local(root)   # the slot is free again
    wait_for(lambda: [e["kind"] for e in read_events(root / "events.jsonl")].count("run_end") == 2, 180,
             "the resumed run to end")
    starts = [e for e in read_events(root / "events.jsonl") if e["kind"] == "run_start"]
    assert starts[-1]["pid"] == run.pid and starts[-1]["slot"] == "cpu0"
    assert json.loads((root / scheduler.SLOT).read_text())["pid"] == run.pid
    assert read_events(root / "events.jsonl")[-1]["status"] == "ok"


FAKE_NVIDIA_SMI = """#!/bin/sh
# four GPUs, answering the scheduler's query (--query-gpu=index --format=csv,noheader)
case "$*" in *--query-gpu=index*) printf '0\\n1\\n2\\n3\\n' ;; *) exit 9 ;; esac
"""


def test_a_fake_nvidia_smi_with_four_gpus_gives_four_slots_and_four_devices(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("BAN_SCHEDULE_INTERVAL", "0.1")
    runs = tmp_path / "runs"
    assert scheduler.host_slots(runs) == ["gpu0", "gpu1", "gpu2", "gpu3"]
    gate = tmp_path / "gate"   # the four first jobs run until this file exists

    def job(i: int, need: int = 1):
        root = runs / "e" / f"r{i}"
        argv = ["sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES $BAN_SLOT" > {root}/env; '
                            f"while [ ! -e {gate} ]; do sleep 0.05; done"]
        return root, scheduler.submit(root, "", argv, need)

    first = [job(i) for i in range(4)]
    assert all("pid" in got for _, got in first)
    wide_root, wide = job(4, need=2)          # a gpus = 2 chain: no two free GPUs now
    assert wide == {"position": 1}
    envs = wait_for(lambda: all((r / "env").exists() and (r / "env").read_text() for r, _ in first)
                    and [(r / "env").read_text().split() for r, _ in first], 20, "four jobs")
    assert sorted(e[0] for e in envs) == ["0", "1", "2", "3"]               # four distinct devices
    assert all(slot == f"gpu{dev}" for dev, slot in envs)
    assert scheduler.load(runs) == {"slots": 4, "busy": 4, "queued": 1}
    gate.write_text("go")
    wait_for(lambda: (wide_root / "env").exists() and (wide_root / "env").read_text(), 30, "the two-GPU job")
    devices, slots = (wide_root / "env").read_text().split()
    assert len(devices.split(",")) == 2 and slots == ",".join(f"gpu{d}" for d in devices.split(","))


def test_slots_from_the_host_table_and_busy_only_while_the_pid_lives(tmp_path):
    runs = tmp_path / "runs"
    scheduler.configure(runs, gpus=[0, 1, 3])
    assert scheduler.host_slots(runs) == ["gpu0", "gpu1", "gpu3"]
    scheduler.configure(runs, slots=3)
    assert scheduler.host_slots(runs) == ["cpu0", "cpu1", "cpu2"]
    assert scheduler.slot_env(["cpu1"], 3)["BAN_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
    gone = subprocess.Popen(["true"])
    gone.wait()
    for name, pid in (("dead", gone.pid), ("alive", os.getpid())):   # a crash leaves its record: not busy
        (runs / "e" / name).mkdir(parents=True)
        scheduler.write_json(runs / "e" / name / scheduler.SLOT, {"slots": [f"cpu{len(name) % 3}"], "pid": pid})
    assert scheduler.busy_slots(runs) == {"cpu2"}


def test_omp_num_threads_caps_the_threads_of_a_cpu_slot(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert scheduler.slot_env(["cpu0"], 2)["BAN_THREADS"] == "4"            # cores / slots
    assert scheduler.slot_env(["cpu0", "cpu1"], 2)["BAN_THREADS"] == "8"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert scheduler.slot_env(["cpu0", "cpu1"], 2)["BAN_THREADS"] == "1"    # the user's cap holds
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert scheduler.slot_env(["cpu0"], 2)["BAN_THREADS"] == "4"            # a cap, never a raise
    assert "BAN_THREADS" not in scheduler.slot_env(["gpu0"], 2)


def test_a_run_already_started_is_not_started_twice(tmp_path):
    runs = tmp_path / "runs"
    root = runs / "e" / "r0"
    scheduler.configure(runs, slots=1)
    (runs / "e" / "x").mkdir(parents=True)
    scheduler.write_json(runs / "e" / "x" / scheduler.SLOT, {"slots": ["cpu0"], "pid": os.getpid()})  # the only slot: busy
    assert scheduler.submit(root, "", ["sh", "-c", f"touch {tmp_path}/twice"]) == {"position": 1}
    lock = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                             f"fd = os.open({str(root / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert lock.stdout.readline() == "held\n"     # an engine holds the run's lock
        (runs / "e" / "x" / scheduler.SLOT).unlink()  # the slot frees
        assert scheduler.start_ready(runs) == [] and not (root / scheduler.QUEUED).exists()
    finally:
        lock.kill()
        lock.wait()
    time.sleep(0.3)
    assert not (tmp_path / "twice").exists() and not (root / scheduler.SLOT).exists()


def test_the_queue_on_an_ssh_host_survives_the_launcher_and_the_scheduler(sshd, tmp_path):
    runs_name = f"qruns-{os.getpid()}"
    # Each submit over ssh waits for the engine's first event (a few seconds): the chains are held
    # after their epoch until both slots were found busy and the scheduler killed.
    (tmp_path / "q.toml").write_text(CHAINS.format(seeds=[0, 1, 2], epochs=1, host='host = "loop"', name="loop",
                                                   ssh=f'ssh = "loop"\nworkdir = "{sshd.workdir}"\n'
                                                       f'python = "{sys.executable}"\nruns_dir = "{runs_name}"\n'))
    runs = Path(sshd.workdir) / runs_name
    gate = hold(runs / "q")
    launcher = subprocess.Popen([BAN, "run", "q.toml"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        wait_for(lambda: launcher.poll() is None and len(list(runs.glob("q/*/experiment.toml"))) == 3
                 and len(scheduler.queued(runs)) == 1 or launcher.poll() is not None, 90, "two started, one queued")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    assert launcher.returncode == -signal.SIGKILL, launcher.stdout.read()
    sshd.kill_clients()   # and every ssh connection of ours
    kill_scheduler(runs)
    roots = sorted(p.parent for p in runs.glob("q/*/experiment.toml"))
    [waiting] = [r for r, _ in scheduler.queued(runs)]
    started = [r for r in roots if r != waiting]
    gate.unlink()
    wait_for(lambda: all(ended(r) for r in started) and not scheduler.busy_slots(runs), 120, "the two to end")
    assert scheduler.queued(runs)[0][0] == waiting and not (waiting / scheduler.SLOT).exists()

    listed = ban("ls", "--host", "loop", "--config", "q.toml", cwd=tmp_path)   # restarts the scheduler there
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"q/{waiting.name}\s+queued #1\s", listed.stdout), listed.stdout
    followed = ban("follow", waiting.name, "--host", "loop", "--config", "q.toml", cwd=tmp_path, timeout=150)
    assert followed.returncode == 0 and f"q/{waiting.name} ended ok" in followed.stdout, followed.stdout + followed.stderr
    check_slots_and_overlap(roots, {"cpu0", "cpu1"}, 2)
