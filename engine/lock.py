"""One writer per run: an exclusive `flock` on `<run>/lock`, held for the engine's life.

The engine takes the lock before it reads or writes anything else in a run directory; a second
engine (a second `run --run-id`, or a `resume` racing another) gets `Locked` and touches
nothing. The kernel drops a flock when its holder dies, however it dies (SIGKILL included), so
a lock file left by a dead engine never blocks. The file holds "pid host" of the holder, for
the message only: the lock itself is the truth.

Imports no torch and no textual.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "lock"


class Locked(Exception):
    """Another process holds the run's lock."""


_HELD: set[int] = set()   # descriptors of the run locks this process holds


def _drop_in_child() -> None:
    """In a forked child (a DataLoader worker): close its copies of the held locks. A flock
    belongs to the open file, which a fork shares; a worker that outlives its SIGKILLed engine
    by a moment would otherwise keep the run locked, and the resume is refused as "already
    being written"."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_child)


class RunLock:
    """The held lock of one run directory; `release()` (or process exit) drops it."""

    def __init__(self, root: Path, fd: int):
        self.root, self.fd = root, fd
        _HELD.add(fd)

    def release(self) -> None:
        if self.fd >= 0:
            _HELD.discard(self.fd)
            os.close(self.fd)   # closing the only descriptor releases the flock
            self.fd = -1


def _plausible(words: list[str]) -> bool:
    """"pid host" of a live process (on another host: cannot be told, take it)."""
    if len(words) < 2 or not words[0].isdigit():
        return False
    if words[1] != socket.gethostname():
        return True
    try:
        os.kill(int(words[0]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def holder(path: Path, wait: float = 1.0) -> tuple[str, str]:
    """(pid, host) written by the lock's holder. It writes them just after taking the lock,
    over what a dead holder left, so give it a moment before saying "?"."""
    deadline = time.monotonic() + wait
    while True:
        try:
            words = path.read_text().split()
        except OSError:
            words = []
        if _plausible(words) or time.monotonic() > deadline:
            return (words + ["?", "?"])[0], (words + ["?", "?"])[1]
        time.sleep(0.02)


def acquire(root: Path) -> RunLock:
    """Lock the existing run directory `root` for this process, or raise Locked naming the
    holder. OSError when the directory cannot hold a lock file (missing, read-only)."""
    root = Path(root)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid, host = holder(path)
        raise Locked(f"run {root} is already being written by pid {pid} (host {host})") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return RunLock(root, fd)
