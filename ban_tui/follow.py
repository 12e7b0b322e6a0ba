"""Sources of events, and the loop that follows them.

A source is anything with
    .name      "experiment/run-id", for display
    .state     the engine.runs.RunState folded from the events seen so far
    .poll()    -> the new events (a list of dicts), each once, in order
    .ended()   -> True once the run will write nothing more (run_end seen, or its process gone)
    .status()  -> ok / failed / cancelled / running / stale / dead, liveness told where it runs
`LocalSource` follows a run directory on this machine; a remote source (ban_tui.remote) follows
one over ssh with the same interface, so `follow()` and every view work on both.
"""
from __future__ import annotations

import time
from pathlib import Path

from engine.runs import STALE_AFTER, RunFollower, pid_alive, process_start_time
from ban_tui.launch import engine_pids


class LocalSource:
    """A local run directory. Give `pid` when this process just launched (or resumed) it: the
    run then lasts as long as that process, whatever old run_end the events still hold."""

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

    def status(self) -> str:
        return self.state.status()

    def ended(self) -> bool:
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


def follow(sources, on_events, stop_when_all_ended: bool = True, interval: float = 0.2) -> None:
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
