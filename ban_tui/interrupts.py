"""Ctrl-C and SIGTERM while `ban run` or `ban resume` follows runs it started on this machine:
the engines are asked to stop (they checkpoint), queued runs leave the queue, and the user is
told how to resume. Never imports torch or textual."""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager

from rich.console import Console

from engine import scheduler
from engine.runs import load_state
from ban_tui import launch
from ban_tui.live import say

EXIT_CANCELLED = 130

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def cancel_on_signals() -> None:
    """From here on SIGINT and SIGTERM raise KeyboardInterrupt, whatever this process inherited:
    a script's background job starts with SIGINT ignored, and Python then never turns it into
    KeyboardInterrupt. Engines started later inherit the default disposition, not the ignore."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    for sig in SIGNALS:
        signal.signal(sig, interrupt)


@contextmanager
def signals_held():
    """SIGINT/SIGTERM are noted and raised as KeyboardInterrupt once the block ends, so that a
    Ctrl-C never falls between starting (or signalling) an engine and noting it. (Not a blocked
    signal mask: engines started meanwhile would inherit it and never see their SIGTERM.)"""
    caught = []
    before = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def wait_stopped(runs, timeout: float) -> bool:
    """Wait until none of the runs has a live engine; True if they all stopped in time."""
    deadline = time.time() + timeout
    while any(launch.running_pid(r) for r in runs):
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def sigterm_all(run_dirs) -> None:
    with signals_held():
        for d in run_dirs:
            try:
                launch.cancel(d)
            except launch.LaunchError:
                pass


def cancel_and_explain(console: Console, run_dirs) -> int:
    """Ctrl-C (or SIGTERM) while watching runs we started: SIGTERM them first (runs still in the
    queue leave it), then say so, wait for their checkpoints and say how to resume. A second
    Ctrl-C stops waiting (the engines still stop on their own); output that fails (say, tee died)
    is dropped and stops nothing."""
    waiting = [d for d in run_dirs if scheduler.dequeue(d)]
    run_dirs = [d for d in run_dirs if d not in waiting]
    try:
        sigterm_all(run_dirs)   # a signal held meanwhile arrives as the block ends: ignored here
    except KeyboardInterrupt:
        pass
    try:
        for d in waiting:
            say(console, f"{d.parent.name}/{d.name}: taken out of the queue (it never started)")
        say(console, "cancelling: the engines finish their step, checkpoint and stop ...")
        wait_stopped(run_dirs, timeout=120)
    except KeyboardInterrupt:
        pass
    with signals_held():
        for d in run_dirs:
            say(console, f"{d.parent.name}/{d.name}: {load_state(d).status()}; resume with: ban resume {d}")
    return EXIT_CANCELLED
