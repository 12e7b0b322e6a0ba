"""`RemoteSource`: a run's events.jsonl on a host, followed by byte offset over ssh; the remote
implementation of ban_tui.follow.Source (LocalSource is the local one)."""
from __future__ import annotations

import posixpath
import threading
import time
from collections import deque
from dataclasses import dataclass

from engine.events import EventDecoder
from engine.runs import STALE_AFTER, RunState
from engine.spec import Host
from ban_tui.remote.transport import error_line, rpath, ssh

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0   # seconds between reconnects after a drop, doubling


@dataclass
class Fetch:
    """What one round trip learnt: new events and the state of the link."""
    events: list
    connected: bool
    error: str = ""
    alive: bool | None = None
    more: bool = False
    pid: int | None = None    # the engine whose liveness `alive` tells (None: the queue's answer)


class RemoteSource:
    """Follows a run's events.jsonl on a host by byte offset: a ban_tui.follow.Source, the remote
    twin of LocalSource.

    Each fetch asks for the bytes past the last complete line seen and yields the new events
    (each seq once). When the connection drops, `connected` turns False, `error` holds ssh's line
    and fetches wait a back-off (0.5 s doubling to 10 s) before trying again from the same offset,
    so a drop loses no event and shows none twice. `on_connection(source)` is called when
    `connected` changes. Give `pid` when this process launched the run: it then lasts as long as
    that pid. Fetches closer than `interval` seconds apart are skipped.

    `poll()` fetches in the caller's thread (a round trip: fine for the CLI). After `start()` a
    thread of its own fetches, and `poll()` only hands over what it found, so a UI thread that
    polls never waits on the network.
    """

    local = False   # its files and its process are on the host

    def __init__(self, host: Host, run_dir: str, pid: int | None = None, interval: float = 0.5,
                 timeout: float = 15.0, max_bytes: int = 1 << 22):
        self.host, self.run_dir, self.pid, self.pid_start = host, run_dir.rstrip("/"), pid, None
        self.events_path = posixpath.join(self.run_dir, "events.jsonl")
        self.interval, self.timeout, self.max_bytes = interval, timeout, max_bytes
        self.state = RunState()
        self.connected: bool | None = None   # None until the first fetch
        self.error = ""
        self.drops = 0
        self.alive: bool | None = None       # the engine's pid on the host, once known
        self.more = False                    # the last fetch stopped at max_bytes
        self.opened = time.time()
        self.on_connection = None
        # the fetcher's own (in the fetch thread once started)
        self.decoder = EventDecoder()
        self.backoff = 0.0
        self.next_try = 0.0
        self._found: deque[Fetch] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        parts = ["", *self.run_dir.split("/")]
        return f"{self.state.experiment or parts[-2]}/{self.state.run_id or parts[-1]}"

    def _pid(self) -> int | None:
        return self.pid or self.state.pid

    def _command(self) -> str:
        f, offset = rpath(self.events_path), self.decoder.offset
        pid = self._pid()
        alive = f"kill -0 {int(pid)} 2>/dev/null && a=1 || a=0; " if pid else ""
        # First line "<size> <alive>", then the bytes from the offset on.
        return (f"s=$(wc -c 2>/dev/null < {f}) || s=-1; a=-; {alive}echo $s $a; "
                f"if [ $s -ge {offset} ]; then tail -c +{offset + 1} {f} | head -c {self.max_bytes}; fi")

    def fetch(self) -> Fetch | None:
        """One round trip (None while waiting out the interval or a back-off)."""
        now = time.monotonic()
        if now < self.next_try:
            return None
        asked = self._pid()
        proc = ssh(self.host, self._command(), timeout=self.timeout)
        header, _, data = proc.stdout.partition(b"\n")
        try:
            size, alive = header.decode().split()
            size = int(size)
        except ValueError:
            size = None
        if proc.returncode != 0 or size is None:
            self.backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, 2 * self.backoff))
            self.next_try = now + self.backoff
            return Fetch([], False, error_line(proc))
        self.backoff = 0.0
        alive = {"1": True, "0": False}.get(alive)
        if 0 <= size < self.decoder.offset:   # the file shrank or was replaced: read it again
            self.decoder.reset()
            return Fetch([], True, alive=alive, more=True)
        more = len(data) >= self.max_bytes
        self.next_try = now + (0.0 if more else self.interval)
        # A fresh decoder from the last complete line: a partial line is fetched again in full.
        self.decoder = EventDecoder(self.decoder.offset, self.decoder.last_seq)
        return Fetch(self.decoder.feed(data), True, alive=alive, more=more, pid=asked)

    def _apply(self, found: Fetch) -> list[dict]:
        changed = found.connected != self.connected
        self.drops += not found.connected
        self.connected, self.error, self.more = found.connected, found.error, found.more
        if found.connected:
            self.alive = found.alive
        self.state.extend(found.events)
        if found.connected and self._pid() != found.pid:
            # The events name an engine the host was not asked about (a resume's run_start after
            # the old one's end): its liveness is unknown until the next fetch.
            self.alive = None
        if changed and self.on_connection:
            self.on_connection(self)
        return found.events

    def poll(self) -> list[dict]:
        if self._thread is None:
            found = self.fetch()
            return self._apply(found) if found else []
        events = []
        while self._found:
            events += self._apply(self._found.popleft())
        return events

    def start(self) -> "RemoteSource":
        """Fetch in a daemon thread from now on (until `stop()`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fetch_loop, daemon=True,
                                            name=f"ban-remote-{self.host.name}")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            found = self.fetch()
            if found:
                self._found.append(found)
            self._stop.wait(max(0.01, self.next_try - time.monotonic()))

    def ended(self) -> bool:
        """True once the run will write nothing more: its pid is gone on the host (or, for a run
        this process did not launch, run_end seen). Never while the host is unreachable."""
        if not self.connected or self.more or self._found:
            return False
        if self.pid is not None:
            return self.alive is False
        if self.state.end is not None or self.alive is False:
            return True
        return self.alive is None and time.time() - (self.state.last_ts or self.opened) > STALE_AFTER

    def since_last_event(self) -> float | None:
        """Seconds since the newest event was written (host clock), for "disconnected, last event
        42 s ago"."""
        return None if self.state.last_ts is None else max(0.0, time.time() - self.state.last_ts)

    def status(self, now: float | None = None) -> str:
        """The run's status, with liveness told by the host rather than by a local pid."""
        s = self.state.status(now, check_pid=False)
        return "dead" if s in ("running", "stale") and self.alive is False else s


