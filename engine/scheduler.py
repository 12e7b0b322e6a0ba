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
    <runs_dir>/<exp>/<run-id>/slot.json     {"slots", "claim", "claimer", "pid", "engine", ...}

Slots are claimed before an engine starts. Whoever hands out slots (a launcher submitting, the
scheduler) holds `.assign.lock`, so two never give one slot twice, and writes the run's slot.json
(fsynced, renamed into place) with a fresh `claim` token and its own pid as `claimer` BEFORE it
starts the engine; then it records the engine's `pid`. The engine gets the token as BAN_CLAIM and,
under `.assign.lock`, finds its claim and records its own pid as `engine` (`confirm_claim`), or
refuses to run (exit 2) when the claim is gone. A slot is busy while its slot.json names a live
`pid` or `engine`, or a live `claimer` with no pid yet. A claim whose claimer died before it
recorded a pid, and that no engine confirmed, is revoked (slot.json removed) under the same lock
(`revoke_stale`): the engine it may have started refuses, the run is still queued and starts
again. So a launcher or scheduler killed at any instruction never puts two engines on one slot,
and a crash anywhere frees its slots by itself: nothing counts.

The scheduler only starts queued runs, each in its own session (it never owns them), and exits
once the queue is empty. No queued run is left without one: the scheduler decides to exit and
lets go of `.scheduler.lock` while it holds `.assign.lock`, clearing `.scheduler.json` if it names
it; `ensure_scheduler` (called after every enqueue and by every `ban` command that reads a runs
directory) looks at the lock and `.scheduler.json` under `.assign.lock` too. A run queued before
a scheduler's last look is started by it; one queued after finds the lock free and no live
spawned scheduler, and starts one.

Test hooks: BAN_SCHEDULER_DIE_AT=<step> makes `python -m engine schedule` SIGKILL itself at that
step of a start (claim: before the claim; claimed: after it; fork: in the child between fork and
exec; exec: after the engine started, before its pid is recorded; recorded: after that, before
the queued marker goes). BAN_SCHEDULE_INTERVAL (seconds between looks at the queue) is also how
long the scheduler lingers after its last start.

Imports no torch and no textual (it runs on hosts that only have the engine's torch-free part too).
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
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
    """Whole or not at all: a temp file renamed into place (and removed when the write fails,
    e.g. on a full disk)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


DIE_AT = None   # the step of a start at which this scheduler SIGKILLs itself (a test hook, see above)


def die_at(step: str) -> None:
    if DIE_AT == step:
        os.kill(os.getpid(), signal.SIGKILL)


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


MAX_SLOTS = 1024   # what one host can have (engine/spec/checks.py bounds `slots` and `gpus` by it)


def slot_names(config: dict | None) -> list[str]:
    """The slots of a `.slots.json` value: gpu<i> per listed GPU, cpu<i> per CPU slot; without a
    config the GPUs nvidia-smi lists, else one CPU slot. At most MAX_SLOTS, whatever the file
    says (one written before the bound, or by hand)."""
    config = config if isinstance(config, dict) else {}
    try:
        if config.get("gpus"):
            return [f"gpu{int(i)}" for i in list(config["gpus"])[:MAX_SLOTS]]
        if config.get("slots"):
            return [f"cpu{i}" for i in range(max(1, min(int(config["slots"]), MAX_SLOTS)))]
    except (TypeError, ValueError):
        pass   # a hand-edited file: back to what the machine has
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


def _alive(pair) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and bool(pid_alive(pair[0], pair[1]))


def holds_slots(rec: dict) -> bool:
    """A slot.json holds its slots while its engine (or the process started for it) lives, or,
    before that process is recorded, while the one who claimed them lives."""
    if pid_alive(rec.get("pid"), rec.get("pid_start")) or _alive(rec.get("engine")):
        return True
    return "claim" in rec and rec.get("pid") is None and _alive(rec.get("claimer"))


def stale_claim(rec: dict) -> bool:
    """A claim whose claimer died before recording what it started, and that no engine confirmed."""
    return ("claim" in rec and rec.get("pid") is None and rec.get("engine") is None
            and not _alive(rec.get("claimer")))


def busy_slots(runs_dir: Path) -> set[str]:
    """Slots held by live runs or live claims (a dead pid or a recycled one frees its slots)."""
    busy = set()
    for root in run_dirs(runs_dir, SLOT):
        rec = read_json(root / SLOT)
        if isinstance(rec, dict) and holds_slots(rec):
            busy.update(rec.get("slots", []))
    return busy


def revoke_stale(runs_dir: Path) -> None:
    """Remove the stale claims (call holding `.assign.lock`): an engine started under one finds
    its claim gone and refuses to run, so its run, still queued, can start again."""
    for root in run_dirs(runs_dir, SLOT):
        rec = read_json(root / SLOT)
        if isinstance(rec, dict) and stale_claim(rec):
            (root / SLOT).unlink(missing_ok=True)


class ClaimMissing(Exception):
    """The slot claim an engine was started under is gone: another launcher revoked it."""


def confirm_claim(root: Path, token: str) -> None:
    """In the engine, before it touches its run: find the claim `token` in root's slot.json under
    `.assign.lock` and record this process in it, so the slots stay busy whoever started it;
    ClaimMissing (the engine must not run) when it is not there. Recording is best effort: a
    full disk leaves the claim, which holds the slots while the started pid lives."""
    root = Path(root)
    with flocked(root.parent.parent / ASSIGN_LOCK):
        rec = read_json(root / SLOT)
        if not isinstance(rec, dict) or rec.get("claim") != token:
            raise ClaimMissing(f"{root}: the slot claim this engine was started under is gone (the launcher "
                               "was stopped before it recorded the start); not running, the run stays queued")
        rec["engine"] = [os.getpid(), process_start_time(os.getpid())]
        try:
            write_atomic(root / SLOT, (json.dumps(rec) + "\n").encode(), tmp_name=".slot.json.tmp")
        except OSError:
            pass


# ---- the queue ------------------------------------------------------------------------------

def submit(root: Path, snapshot: str, argv: list[str], need: int = 1, cwd: str | None = None) -> dict:
    """Put a run in its runs directory's queue, start whatever fits now, and make sure a
    scheduler serves the rest. Returns {"pid": .., "pid_start": ..} when it started at once,
    else {"position": N}."""
    root = Path(root)
    enqueue(root, snapshot, argv, need, cwd)
    runs_dir = root.parent.parent
    start_ready(runs_dir)
    rec = read_json(root / SLOT)
    if rec is not None and not (root / QUEUED).exists():
        return {"pid": rec["pid"], "pid_start": rec.get("pid_start"), "slots": rec["slots"]}
    ensure_scheduler(runs_dir)
    return {"position": queue_position(root)}


def enqueue(root: Path, snapshot: str, argv: list[str], need: int = 1, cwd: str | None = None) -> None:
    """Make the new run directory root with its snapshot, then its queued marker (last)."""
    root.mkdir(parents=True, exist_ok=False)
    tmp = root / f".experiment.toml.tmp-{os.getpid()}"
    try:
        tmp.write_text(snapshot)
        os.replace(tmp, RunPaths(root).snapshot)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(root / QUEUED, {"submitted": time.time(), "argv": list(argv), "need": int(need),
                               "cwd": cwd or os.getcwd()})


def started_elsewhere(root: Path) -> bool:
    """A queued run that some engine already began (its events, a live claim of its own, its
    engine lock). Its pid file is no proof: an engine started under a revoked claim refuses."""
    paths = RunPaths(root)
    if paths.events.exists() and paths.events.stat().st_size > 0:
        return True
    rec = read_json(root / SLOT)
    if isinstance(rec, dict) and holds_slots(rec):
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
        revoke_stale(runs_dir)
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
                try:
                    with open(RunPaths(root).stderr, "a") as err:
                        print(f"error: the scheduler cannot start {marker.get('argv')!r}: {exc}", file=err)
                except OSError:
                    pass
                (root / QUEUED).unlink(missing_ok=True)
                free = taken + free
                continue
            die_at("recorded")
            (root / QUEUED).unlink(missing_ok=True)
            started.append(root)
    return started


def slots_needed(need, slots: list[str]) -> int:
    """At least one slot; a run that needs more than the host has takes the whole host rather
    than wait forever."""
    return min(max(1, int(need)), len(slots))


def write_slot(root: Path, record: dict) -> None:
    write_atomic(root / SLOT, (json.dumps(record) + "\n").encode(), tmp_name=".slot.json.tmp")


def start_on(root: Path, argv: list[str], taken: list[str], n_slots: int, cwd=None) -> dict:
    """Claim the slots `taken` in the run's slot.json (durably), start argv on them (their
    environment, the claim as BAN_CLAIM) and record its pid there. Call holding `.assign.lock`.
    When the pid cannot be recorded the claim is revoked, so the engine refuses to run."""
    env = {**slot_env(taken, n_slots), "BAN_CLAIM": secrets.token_hex(8)}
    record = {"slots": taken, "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
              "threads": env.get("BAN_THREADS"), "claim": env["BAN_CLAIM"],
              "claimer": [os.getpid(), process_start_time(os.getpid())], "pid": None, "pid_start": None}
    die_at("claim")
    write_slot(root, record)
    die_at("claimed")
    try:
        pid, pid_start = spawn_detached(argv, root, env, cwd)
        die_at("exec")
        record.update(pid=pid, pid_start=pid_start, started=time.time())
        write_slot(root, record)
    except BaseException:
        (root / SLOT).unlink(missing_ok=True)   # the engine, if it started, finds no claim and refuses
        raise
    return record


class NoFreeSlot(Exception):
    """Every slot of the runs directory is held by a live run."""


def start_now(root: Path, argv: list[str], need: int = 1) -> dict:
    """Start argv for an existing run (a resume) on free slots of its runs directory, at once;
    NoFreeSlot when not enough are free, so a resume never runs beside a full host's chains."""
    root = Path(root)
    runs_dir = root.parent.parent
    with flocked(runs_dir / ASSIGN_LOCK):
        revoke_stale(runs_dir)
        slots = host_slots(runs_dir)
        need = slots_needed(need, slots)
        busy = busy_slots(runs_dir)
        free = [s for s in slots if s not in busy]
        if len(free) < need:
            raise NoFreeSlot(f"no free slot in {runs_dir}: {len(busy)} of {len(slots)} busy "
                             f"({', '.join(sorted(busy))}); resume it when one frees")
        return start_on(root, argv, free[:need], len(slots))


def dequeue(root: Path) -> bool:
    """Take a run that never started out of the queue (its directory goes); False if it started.
    A run whose engine was started but has not confirmed its claim yet (it is still importing,
    before its signal handlers: a SIGTERM would kill it with nothing written) never started
    either: its claim is revoked, so that engine refuses to run, and its directory goes."""
    root = Path(root)
    with flocked(root.parent.parent / ASSIGN_LOCK):
        rec = read_json(root / SLOT)
        unconfirmed = (isinstance(rec, dict) and "claim" in rec and rec.get("engine") is None
                       and not (RunPaths(root).events.exists() and RunPaths(root).events.stat().st_size))
        if unconfirmed:
            (root / SLOT).unlink(missing_ok=True)
        elif not (root / QUEUED).exists() or started_elsewhere(root):
            return False
        shutil.rmtree(root, ignore_errors=True)
        return True


# ---- processes ------------------------------------------------------------------------------

def spawn_detached(argv: list[str], root: Path, env: dict | None = None, cwd=None) -> tuple[int, int | None]:
    """Start argv in its own session, stdin from /dev/null, output in root's log files, its pid
    file written; (pid, start time). A daemon thread reaps it, so a long-lived parent keeps no
    zombie."""
    paths = RunPaths(Path(root))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}   # logs fill as it runs
    die_in_child = (lambda: os.kill(os.getppid(), signal.SIGKILL)) if DIE_AT == "fork" else None
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                cwd=cwd, start_new_session=True, close_fds=True, preexec_fn=die_in_child)
    start = process_start_time(proc.pid)
    try:   # at once, so views tell "starting" from "broken" before the engine writes it itself
        write_atomic(paths.pid, f"{proc.pid} {start}\n".encode(), tmp_name="pid.launch.tmp")
    except OSError:
        pass   # the engine writes it too (and removed our temp file, taking the run's lock)
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid, start


def ensure_scheduler(runs_dir: Path, python: str = sys.executable) -> int | None:
    """Start a scheduler for runs_dir when runs wait there and none serves them; its pid. Never
    raises: a runs directory that cannot take one (a full disk, read-only) gets a warning on
    stderr and its queued runs wait for the next call."""
    runs_dir = Path(runs_dir)
    try:
        if not runs_dir.is_dir() or not run_dirs(runs_dir, QUEUED):
            return None
        with flocked(runs_dir / ASSIGN_LOCK):   # a scheduler decides to exit under this lock too
            return _start_scheduler(runs_dir, python)
    except OSError as exc:
        print(f"warning: {runs_dir}: cannot start its scheduler ({exc.strerror or exc}); "
              "the queued runs wait for the next `ban` command", file=sys.stderr)
        return None


def _start_scheduler(runs_dir: Path, python: str) -> int | None:
    with flocked(runs_dir / LOCK, blocking=False) as free:
        if not free:
            return None   # one serves, and looks at the queue again before it exits
    spawned = read_json(runs_dir / SPAWNED) or {}
    if pid_alive(spawned.get("pid"), spawned.get("pid_start")):
        return None   # one is starting (it has not taken the lock yet): it will see the queue
    with open(runs_dir / LOG, "ab") as log:
        proc = subprocess.Popen([python, "-m", "engine", "schedule", str(runs_dir.resolve())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True, cwd=str(runs_dir.resolve()))
    threading.Thread(target=proc.wait, daemon=True).start()
    try:
        write_json(runs_dir / SPAWNED, {"pid": proc.pid, "pid_start": process_start_time(proc.pid)})
    except OSError:
        pass   # it takes the lock soon; meanwhile a second one would only find it taken and exit
    return proc.pid


def _forget_spawned(runs_dir: Path) -> None:
    """Called under `.assign.lock` by a scheduler that exits: `.scheduler.json` no longer names a
    live scheduler that will look at the queue."""
    if (read_json(runs_dir / SPAWNED) or {}).get("pid") == os.getpid():
        (runs_dir / SPAWNED).unlink(missing_ok=True)


def serve(runs_dir: Path, interval: float = INTERVAL) -> int:
    """The scheduler's loop: start queued runs as slots free; exit 0 once the queue is empty (or
    at once when another scheduler holds the lock). The lock is taken and let go, and the queue
    looked at for the last time, under `.assign.lock` (see the module's docstring)."""
    global DIE_AT
    DIE_AT = os.environ.pop("BAN_SCHEDULER_DIE_AT", None)   # a test hook; the engines do not inherit it
    runs_dir = Path(runs_dir)
    fd = os.open(runs_dir / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    with flocked(runs_dir / ASSIGN_LOCK):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # another serves, and will see every queued run
            _forget_spawned(runs_dir)
            os.close(fd)
            return 0
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    while True:
        for root in start_ready(runs_dir):
            print(f"{time.strftime('%H:%M:%S')} started {root.parent.name}/{root.name}", flush=True)
        time.sleep(interval)
        with flocked(runs_dir / ASSIGN_LOCK):
            if not run_dirs(runs_dir, QUEUED):
                _forget_spawned(runs_dir)
                os.close(fd)   # lets the scheduler lock go while no run can be queued unseen
                return 0


def load(runs_dir: Path) -> dict:
    """{"slots": N, "busy": slots in use, "queued": runs waiting}: how full a host is, to spread
    a grid over several."""
    runs_dir = Path(runs_dir)
    return {"slots": len(host_slots(runs_dir)), "busy": len(busy_slots(runs_dir)) if runs_dir.is_dir() else 0,
            "queued": len(run_dirs(runs_dir, QUEUED)) if runs_dir.is_dir() else 0}
