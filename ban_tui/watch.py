"""Following every run of a runs directory in the background, for the TUI.

A `Watcher` runs in a thread worker: it finds run directories (new ones appear as the engine
creates them), polls each run's ban_tui.follow.Source (a LocalSource, or a RemoteSource added by
the app), folds the events into a `RunModel` and posts typed messages (ban_tui.messages)
saying which runs changed. The app batches those into a `RunsUpdate` on a timer and hands it to
every view through its `runs` reactive; views read the models then, under `watcher.lock`.

Every series and log here is a deque with a maximum length, so a run that lasts days keeps a
bounded memory: the curves keep the last CURVE_CAP epochs of each generation.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ban_tui.follow import LocalSource, Source
from ban_tui.messages import RunAdded, RunEvents, RunStderr
from engine.runs import RunPaths, list_runs

CURVE_CAP = 400          # points per series (one series per generation and metric)
DIAGNOSTIC_CAP = 200     # epochs of gradient diagnostics per generation
STDERR_CAP = 300         # lines of the engine's stderr tail
STDERR_READ = 1 << 16    # bytes read from stderr.log per poll: a flood cannot stall the watcher
CURVE_KEYS = ("train_loss", "test_loss", "train_err", "test_err", "train_ppl", "test_ppl")
DIAGNOSTIC_KEYS = ("grad_correct", "grad_dark")
POLL_SECONDS = 0.2
SCAN_SECONDS = 1.0
ENDED_POLL_EVERY = 10    # an ended run writes again only if resumed: poll it every 10th round


class RunModel:
    """One followed run: its source (events folded into `state`), capped curves, gradient
    diagnostics and the tail of its stderr."""

    def __init__(self, run_dir: Path, source: Source):
        self.run_dir = Path(run_dir)
        self.source = source
        # curves[key][gen] = deque of (epoch, value)
        self.curves: dict[str, dict[int, deque]] = {k: {} for k in CURVE_KEYS}
        self.diagnostics: dict[int, dict[str, deque]] = {}
        self.epochs: dict[int, deque[dict]] = {}   # epochs[gen] = the latest CURVE_CAP epoch events
        self.stderr: deque[str] = deque(maxlen=STDERR_CAP)
        self.stderr_lines = 0            # lines read so far (views write the ones they have not)
        self._stderr_offset = 0
        self._stderr_partial = b""

    @property
    def state(self):
        return self.source.state

    def status(self) -> str:
        """The source's status (a remote run's liveness is told by its host); and for a run whose
        engine has not written run_start yet: dead once the process launched here is gone, stale
        once nothing came for a while."""
        status = self.source.status()
        if status == "running" and self.state.pid is None and self.source.ended():
            return "dead" if self.source.pid else "stale"
        return status

    def poll(self) -> list[dict]:
        events = self.source.poll()
        for e in events:
            if e.get("kind") == "epoch":
                self._add_epoch(e)
        return events

    def _add_epoch(self, e: dict) -> None:
        gen, epoch = e.get("gen"), e.get("epoch", 0)
        kept = self.epochs.setdefault(gen, deque(maxlen=CURVE_CAP))
        while kept and kept[-1].get("epoch", 0) >= epoch:   # a resume repeats epochs: keep the newest
            kept.pop()
        kept.append(e)
        for key in CURVE_KEYS:
            if e.get(key) is not None:
                series = self.curves[key].setdefault(gen, deque(maxlen=CURVE_CAP))
                while series and series[-1][0] >= epoch:   # a resume repeats epochs: keep the newest
                    series.pop()
                series.append((epoch, e[key]))
        diag = e.get("diagnostics") or {}
        if any(diag.get(k) is not None for k in DIAGNOSTIC_KEYS):
            d = self.diagnostics.setdefault(gen, {k: deque(maxlen=DIAGNOSTIC_CAP) for k in DIAGNOSTIC_KEYS})
            for k in DIAGNOSTIC_KEYS:
                d[k].append(float(diag.get(k) or 0.0))

    def poll_stderr(self) -> list[str]:
        """New complete lines of stderr.log (of a local run; a remote run's stays on its host)."""
        if not self.source.local:
            return []
        path = RunPaths(self.run_dir).stderr
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if size < self._stderr_offset:          # truncated or replaced: start again
                    self._stderr_offset, self._stderr_partial = 0, b""
                f.seek(self._stderr_offset)
                chunk = f.read(STDERR_READ)
        except OSError:
            return []
        self._stderr_offset += len(chunk)
        data = self._stderr_partial + chunk
        end = data.rfind(b"\n") + 1
        self._stderr_partial = data[end:][-STDERR_READ:]
        lines = data[:end].decode(errors="replace").splitlines()[-STDERR_CAP:]
        self.stderr.extend(lines)
        self.stderr_lines += len(lines)
        return lines


@dataclass(frozen=True, eq=False)
class RunsUpdate:
    """What the views are handed at each redraw tick (the app's `runs` reactive): every followed
    run's model, which of them changed since the last tick (None: all of them, on the periodic
    tick where statuses move with the clock and with processes: stale, dead) and the time.
    Read it only in the watcher callback: the app holds `watcher.lock` while calling them."""

    models: Mapping[Path, RunModel]
    changed: frozenset[Path] | None
    now: float

    def touches(self, run_dir: Path) -> bool:
        """The run is followed and has something new to draw."""
        return run_dir in self.models and (self.changed is None or run_dir in self.changed)


class Watcher:
    """Finds and follows the runs of a runs directory; `post` receives the messages (thread-safe:
    Textual's post_message may be called from the worker thread)."""

    def __init__(self, runs_dir: Path, post: Callable, interval: float = POLL_SECONDS):
        self.runs_dir = Path(runs_dir)
        self.post = post
        self.interval = interval
        self.models: dict[Path, RunModel] = {}
        self.lock = threading.RLock()   # held while polling a run and while widgets read models
        self._round = 0

    def add(self, run_dir: Path, source: Source | None = None) -> RunModel:
        """Follow a run (once). `source` defaults to a LocalSource of the directory; a given one
        (a RemoteSource) has `run_dir` as its unique key."""
        run_dir = Path(run_dir).resolve() if source is None else Path(run_dir)
        with self.lock:
            model = self.models.get(run_dir)
            if model is None:
                model = self.models[run_dir] = RunModel(run_dir, source or LocalSource(run_dir))
                self.post(RunAdded(run_dir))
            elif source is not None:   # just launched or resumed here: follow its process
                model.source.pid, model.source.pid_start = source.pid, source.pid_start
        return model

    def forget(self, run_dir: Path) -> None:
        """Stop following a run (its directory was deleted)."""
        with self.lock:
            model = self.models.pop(Path(run_dir), None)
            if model is not None:
                model.source.stop()

    def close(self) -> None:
        """Stop the sources that fetch in threads of their own (remote ones)."""
        with self.lock:
            for model in self.models.values():
                model.source.stop()

    def scan(self) -> None:
        for run_dir in list_runs(self.runs_dir):
            if run_dir.resolve() not in self.models:
                self.add(run_dir)

    def poll_once(self) -> int:
        """One round over every run; the number of events read."""
        self._round += 1
        n = 0
        for model in list(self.models.values()):
            if model.state.end is not None and self._round % ENDED_POLL_EVERY:
                continue
            with self.lock:
                events = model.poll()
                lines = model.poll_stderr()
            if events:
                n += len(events)
                self.post(RunEvents(model.run_dir, events))
            if lines:
                self.post(RunStderr(model.run_dir, lines))
        return n

    def run(self, stopped: Callable[[], bool]) -> None:
        """Scan and poll until stopped() (the thread worker's cancellation)."""
        next_scan = 0.0
        while not stopped():
            if time.monotonic() >= next_scan:
                self.scan()
                next_scan = time.monotonic() + SCAN_SECONDS
            self.poll_once()
            time.sleep(self.interval)
