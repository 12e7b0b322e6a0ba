"""Sources of events, and the loop that follows them.

`Source` (below) is what every view reads: `ban follow`, `ban run`'s live view and the TUI's
watcher. `LocalSource` follows a run directory on this machine; `ban_tui.remote.source.RemoteSource`
follows one on a host over ssh. Both implement the protocol (tests/test_tui_sources.py holds them
to it), so `follow()` and every view work on both without asking which one they have.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.spec import Host
from engine.runs import STALE_AFTER, RunFollower, RunState, pid_alive, process_start_time
from ban_tui.launch import engine_pids


@runtime_checkable
class Source(Protocol):
    """A run's events as they come, wherever the run is."""

    local: bool               # the run directory is on this machine: its files (stderr.log) can be
                              # read and its process signalled here
    pid: int | None           # the engine this process launched or resumed (None: not launched here);
    pid_start: int | None     # set both to follow a run just (re)started: it then lasts as long as that pid
    run_dir: Path | str       # the run directory: a Path here, a host path (str) on a host
    host: Host | None         # the [hosts] table it is followed over (None: this machine); its
                              # backend (ban_tui.backends.backend_for(host)) cancels, resumes, removes it

    @property
    def name(self) -> str:
        """The run as "experiment/run-id", for display."""

    @property
    def state(self) -> RunState:
        """The engine.runs.RunState folded from the events seen so far."""

    def poll(self) -> list[dict]:
        """The new events, each once, in order."""

    def status(self, now: float | None = None) -> str:
        """ok / failed / cancelled / running / stale / dead, liveness told where the run runs."""

    def ended(self) -> bool:
        """True once the run will write nothing more (run_end seen, or its process gone)."""

    def stop(self) -> None:
        """Stop any fetching of its own (a thread); the source is not polled afterwards."""


class LocalSource:
    """A local run directory (a `Source`). Give `pid` when this process just launched (or resumed)
    it: the run then lasts as long as that process, whatever old run_end the events still hold."""

    local = True
    host = None

    def __init__(self, run_dir, pid: int | None = None, pid_start: int | None = None):
        self.run_dir = Path(run_dir)
        self.follower = RunFollower(self.run_dir)
        self.pid = pid
        self.pid_start = pid_start if pid_start is not None or pid is None else process_start_time(pid)
        self.opened = time.time()

    @property
    def state(self):
        return self.follower.state

    @property
    def name(self) -> str:
        s = self.state
        return f"{s.experiment or self.run_dir.parent.name}/{s.run_id or self.run_dir.name}"

    def poll(self) -> list[dict]:
        return self.follower.poll()

    def status(self, now: float | None = None) -> str:
        return self.state.status(now)

    def ended(self) -> bool:
        if self.state.gone:
            return True   # its directory was removed: status "removed"
        if self.pid is not None:
            return pid_alive(self.pid, self.pid_start) is False
        s = self.state
        pids = engine_pids(self.run_dir, s)
        if any(pid_alive(pid, start) for pid, start in pids):
            return False  # (a run resumed by someone else is running again despite its old run_end)
        if s.end is not None or pids:
            return True
        if s.queued is not None:
            return False   # waiting for a slot (engine.scheduler)
        # no process known yet: give a starting engine time to say hello
        return time.time() - (s.last_ts or self.opened) > STALE_AFTER

    def stop(self) -> None:
        """Nothing to stop: a local source reads only when polled."""


def follow(sources: list[Source], on_events, stop_when_all_ended: bool = True, interval: float = 0.2) -> None:
    """Poll every source and pass new events to on_events(source, events) until all ended.

    Whether a source ended is checked before its last poll, so the events a run writes just
    before its process exits are always delivered."""
    while True:
        ended = [s.ended() for s in sources]
        for s in sources:
            events = s.poll()
            if events:
                on_events(s, events)
        if stop_when_all_ended and all(ended):
            return
        time.sleep(interval)
