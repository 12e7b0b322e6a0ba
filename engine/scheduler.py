"""GPU slots and a queue per runs directory: `python -m engine schedule RUNS_DIR`.

A host has slots: its GPUs (``gpu0``, ``gpu1``, ... from ``nvidia-smi`` or a ``gpus = [0, 1, 3]``
list), or ``slots = N`` CPU slots (``cpu0`` ...; one on a CPU box by default). A chain takes one
slot (a ``gpus = N`` experiment takes N) and runs with CUDA_VISIBLE_DEVICES set to its GPUs, or
with BAN_THREADS = cores / slots on CPU slots; BAN_SLOT names the slots taken.

The queue is plain files in the runs directory:

    <runs_dir>/.slots.json                  {"gpus": [0, 1]} or {"slots": 2}; absent: detected
    <runs_dir>/.scheduler.lock              flock held by the one scheduler of the directory (its pid)
    <runs_dir>/.scheduler.json              {"pid", "pid_start"} of the scheduler last started
    <runs_dir>/.assign.lock                 flock held while slots are handed out
    <runs_dir>/<exp>/<run-id>/experiment.toml   the resolved experiment (written first)
    <runs_dir>/<exp>/<run-id>/queued        {"submitted", "argv", "need", "cwd"} (written last)
    <runs_dir>/<exp>/<run-id>/slot.json     {"slots", "cuda_visible_devices", "pid", "pid_start"}

A slot is busy while a run whose slot.json names it has a live pid (same start time), so a crash
anywhere frees its slots by itself: nothing counts. Whoever hands out slots (a launcher
submitting, the scheduler) holds `.assign.lock`, so two never give one slot twice. The scheduler
only starts queued runs, each in its own session (it never owns them), and exits once the queue is
empty; `ensure_scheduler` (called by every `ban` command that reads a runs directory) starts one
again where queued runs wait and none holds the lock.

Imports no torch and no textual (it runs on hosts that only have the engine's torch-free part too).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from engine.queue_order import QUEUED, queue_position, queued, read_json, run_dirs  # noqa: F401 - the queue as read
from engine.runs import RunPaths, pid_alive, process_start_time, write_atomic

SLOT = "slot.json"
SLOTS_FILE, LOCK, ASSIGN_LOCK, LOG = ".slots.json", ".scheduler.lock", ".assign.lock", ".scheduler.log"
SPAWNED = ".scheduler.json"   # the scheduler last started, so a second is not started while it starts
INTERVAL = float(os.environ.get("BAN_SCHEDULE_INTERVAL", "0.5"))   # seconds between looks at the queue


# ---- files ----------------------------------------------------------------------------------

def write_json(path: Path, value) -> None:
    """Whole or not at all: a temp file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value) + "\n")
    os.replace(tmp, path)


@contextmanager
def flocked(path: Path, blocking: bool = True):
    """An exclusive flock on path (created); yields False when non-blocking and held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# ---- slots ----------------------------------------------------------------------------------

def detect_gpus() -> list[int]:
    """GPU indices from `nvidia-smi --query-gpu=index`; [] without nvidia-smi or when it fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    first = [line.split(",")[0].strip() for line in out.stdout.splitlines()] if out.returncode == 0 else []
    return [int(x) for x in first if x.isdigit()]


def slot_names(config: dict | None) -> list[str]:
    """The slots of a `.slots.json` value: gpu<i> per listed GPU, cpu<i> per CPU slot; without a
    config the GPUs nvidia-smi lists, else one CPU slot."""
    config = config or {}
    if config.get("gpus"):
        return [f"gpu{int(i)}" for i in config["gpus"]]
    if config.get("slots"):
        return [f"cpu{i}" for i in range(int(config["slots"]))]
    return [f"gpu{i}" for i in detect_gpus()] or ["cpu0"]


def configure(runs_dir: Path, gpus: list[int] | None = None, slots: int | None = None) -> None:
    """Record a host's slots in its runs directory (what a restarted scheduler reads); with
    neither, forget them (the machine's GPUs, else one CPU slot)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    value = {"gpus": list(gpus)} if gpus else {"slots": int(slots)} if slots else None
    if value is None:   # back to what the machine has
        (runs_dir / SLOTS_FILE).unlink(missing_ok=True)
    elif read_json(runs_dir / SLOTS_FILE) != value:
        write_json(runs_dir / SLOTS_FILE, value)


def host_slots(runs_dir: Path) -> list[str]:
    return slot_names(read_json(Path(runs_dir) / SLOTS_FILE))


def slot_env(taken: list[str], n_slots: int) -> dict:
    """CUDA_VISIBLE_DEVICES for GPU slots, BAN_THREADS (cores / slots) for CPU ones, BAN_SLOT,
    and CUDA_DEVICE_ORDER=PCI_BUS_ID (slots number GPUs as nvidia-smi does; CUDA's default order
    puts the fastest first, so on a mixed-GPU host a slot could name another GPU).

    An OMP_NUM_THREADS set where the run is started caps BAN_THREADS: it is how a user (or a
    batch system) says how many threads a process may have, and a slot's larger share made
    engines on a busy machine spin-wait between OpenMP threads (an 0.7 s epoch took 25 s)."""
    env = {"BAN_SLOT": ",".join(taken), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}   # CUDA's indices = nvidia-smi's (slots')
    if taken[0].startswith("gpu"):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(s[3:] for s in taken)
    else:
        threads = max(1, (os.cpu_count() or 1) * len(taken) // max(1, n_slots))
        cap = os.environ.get("OMP_NUM_THREADS", "").strip()
        if cap.isdigit() and int(cap) >= 1:
            threads = min(threads, int(cap))
        env["BAN_THREADS"] = str(threads)
    return env


def busy_slots(runs_dir: Path) -> set[str]:
    """Slots held by live runs (a dead pid or a recycled one frees its slots)."""
    busy = set()
    for root in run_dirs(runs_dir, SLOT):
        rec = read_json(root / SLOT) or {}
        if pid_alive(rec.get("pid"), rec.get("pid_start")):
            busy.update(rec.get("slots", []))
    return busy


# ---- the queue ------------------------------------------------------------------------------

def submit(root: Path, snapshot: str, argv: list[str], need: int = 1, cwd: str | None = None) -> dict:
    """Put a run in its runs directory's queue, start whatever fits now, and make sure a
    scheduler serves the rest. Returns {"pid": .., "pid_start": ..} when it started at once,
    else {"position": N}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=False)
    tmp = root / f".experiment.toml.tmp-{os.getpid()}"
    tmp.write_text(snapshot)
    os.replace(tmp, RunPaths(root).snapshot)
    write_json(root / QUEUED, {"submitted": time.time(), "argv": list(argv), "need": int(need),
                               "cwd": cwd or os.getcwd()})
    runs_dir = root.parent.parent
    start_ready(runs_dir)
    rec = read_json(root / SLOT)
    if rec is not None and not (root / QUEUED).exists():
        return {"pid": rec["pid"], "pid_start": rec.get("pid_start"), "slots": rec["slots"]}
    ensure_scheduler(runs_dir)
    return {"position": queue_position(root)}


def started_elsewhere(root: Path) -> bool:
    """A queued run that some engine already began (its events, pid file or engine lock)."""
    paths = RunPaths(root)
    if paths.events.exists() and paths.events.stat().st_size > 0:
        return True
    try:
        pid, start = (int(x) for x in paths.pid.read_text().split()[:2])
        if pid_alive(pid, start):
            return True
    except (OSError, ValueError):
        pass
    rec = read_json(root / SLOT) or {}
    if pid_alive(rec.get("pid"), rec.get("pid_start")):
        return True
    lock = root / "lock"   # the engine's own flock on its run directory, where it takes one
    if lock.exists():
        with flocked(lock, blocking=False) as free:
            return not free
    return False


def start_ready(runs_dir: Path) -> list[Path]:
    """Start the queued runs that fit on free slots, oldest first; the ones started."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    started = []
    with flocked(runs_dir / ASSIGN_LOCK):
        waiting = queued(runs_dir)
        if not waiting:
            return []
        slots = host_slots(runs_dir)
        free = [s for s in slots if s not in busy_slots(runs_dir)]
        for root, marker in waiting:
            if started_elsewhere(root):
                (root / QUEUED).unlink(missing_ok=True)
                continue
            need = slots_needed(marker.get("need", 1), slots)
            if len(free) < need:
                continue
            taken, free = free[:need], free[need:]
            try:
                start_on(root, marker["argv"], taken, len(slots), marker.get("cwd"))
            except (OSError, KeyError, TypeError) as exc:   # say why in its stderr.log; the queue goes on
                with open(RunPaths(root).stderr, "a") as err:
                    print(f"error: the scheduler cannot start {marker.get('argv')!r}: {exc}", file=err)
                (root / QUEUED).unlink(missing_ok=True)
                free = taken + free
                continue
            (root / QUEUED).unlink(missing_ok=True)
            started.append(root)
    return started


def slots_needed(need, slots: list[str]) -> int:
    """At least one slot; a run that needs more than the host has takes the whole host rather
    than wait forever."""
    return min(max(1, int(need)), len(slots))


def start_on(root: Path, argv: list[str], taken: list[str], n_slots: int, cwd=None) -> dict:
    """Start argv on the slots `taken` (their environment) and record them in the run's slot.json."""
    env = slot_env(taken, n_slots)
    pid, pid_start = spawn_detached(argv, root, env, cwd)
    record = {"slots": taken, "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
              "threads": env.get("BAN_THREADS"), "pid": pid, "pid_start": pid_start, "started": time.time()}
    write_json(root / SLOT, record)
    return record


class NoFreeSlot(Exception):
    """Every slot of the runs directory is held by a live run."""


def start_now(root: Path, argv: list[str], need: int = 1) -> dict:
    """Start argv for an existing run (a resume) on free slots of its runs directory, at once;
    NoFreeSlot when not enough are free, so a resume never runs beside a full host's chains."""
    root = Path(root)
    runs_dir = root.parent.parent
    with flocked(runs_dir / ASSIGN_LOCK):
        slots = host_slots(runs_dir)
        need = slots_needed(need, slots)
        busy = busy_slots(runs_dir)
        free = [s for s in slots if s not in busy]
        if len(free) < need:
            raise NoFreeSlot(f"no free slot in {runs_dir}: {len(busy)} of {len(slots)} busy "
                             f"({', '.join(sorted(busy))}); resume it when one frees")
        return start_on(root, argv, free[:need], len(slots))


def dequeue(root: Path) -> bool:
    """Take a run that never started out of the queue (its directory goes); False if it started."""
    root = Path(root)
    with flocked(root.parent.parent / ASSIGN_LOCK):
        if not (root / QUEUED).exists() or started_elsewhere(root):
            return False
        shutil.rmtree(root)
        return True


# ---- processes ------------------------------------------------------------------------------

def spawn_detached(argv: list[str], root: Path, env: dict | None = None, cwd=None) -> tuple[int, int | None]:
    """Start argv in its own session, stdin from /dev/null, output in root's log files, its pid
    file written; (pid, start time). A daemon thread reaps it, so a long-lived parent keeps no
    zombie."""
    paths = RunPaths(Path(root))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}   # logs fill as it runs
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                cwd=cwd, start_new_session=True, close_fds=True)
    start = process_start_time(proc.pid)
    try:   # at once, so views tell "starting" from "broken" before the engine writes it itself
        write_atomic(paths.pid, f"{proc.pid} {start}\n".encode(), tmp_name="pid.launch.tmp")
    except OSError:
        pass   # the engine writes it too (and removed our temp file, taking the run's lock)
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid, start


def ensure_scheduler(runs_dir: Path, python: str = sys.executable) -> int | None:
    """Start a scheduler for runs_dir when runs wait there and none holds the lock; its pid."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir() or not run_dirs(runs_dir, QUEUED):
        return None
    with flocked(runs_dir / LOCK, blocking=False) as free:
        if not free:
            return None
    spawned = read_json(runs_dir / SPAWNED) or {}
    if pid_alive(spawned.get("pid"), spawned.get("pid_start")):
        return None   # one is starting (it has not taken the lock yet): do not start a second
    log = open(runs_dir / LOG, "ab")
    with log:
        proc = subprocess.Popen([python, "-m", "engine", "schedule", str(runs_dir.resolve())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True, cwd=str(runs_dir.resolve()))
    write_json(runs_dir / SPAWNED, {"pid": proc.pid, "pid_start": process_start_time(proc.pid)})
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid


def serve(runs_dir: Path, interval: float = INTERVAL) -> int:
    """The scheduler's loop: start queued runs as slots free; exit 0 once the queue is empty (or
    at once when another scheduler holds the lock)."""
    runs_dir = Path(runs_dir)
    while True:
        with flocked(runs_dir / LOCK, blocking=False) as mine:
            if not mine:
                return 0
            (runs_dir / LOCK).write_text(f"{os.getpid()}\n")
            while run_dirs(runs_dir, QUEUED):
                for root in start_ready(runs_dir):
                    print(f"{time.strftime('%H:%M:%S')} started {root.parent.name}/{root.name}", flush=True)
                time.sleep(interval)
        # the lock is released: a run queued since the last look is ours, or a new scheduler's
        if not run_dirs(runs_dir, QUEUED):
            return 0


def load(runs_dir: Path) -> dict:
    """{"slots": N, "busy": slots in use, "queued": runs waiting}: how full a host is, to spread
    a grid over several."""
    runs_dir = Path(runs_dir)
    return {"slots": len(host_slots(runs_dir)), "busy": len(busy_slots(runs_dir)) if runs_dir.is_dir() else 0,
            "queued": len(run_dirs(runs_dir, QUEUED)) if runs_dir.is_dir() else 0}
