"""The event stream: the contract between the engine (only writer) and every view (readers).

A run's `events.jsonl` holds one JSON object per line. Every object carries the envelope
``{"v": 1, "seq": n, "ts": unix_seconds, "run": run_id, "kind": kind}`` beside its payload.
``seq`` starts at 1 and grows by one per event; after a resume it continues.

This module imports no torch and no textual: the CLI, the TUI and remote monitors use it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

SCHEMA_VERSION = 1

# Payload fields per kind (documentation and a light check in tests; readers tolerate extras).
KINDS = {
    "run_start": ("experiment", "config_hash", "host", "pid", "pid_start", "versions", "device", "seed", "threads"),
    "gen_start": ("gen", "role", "objective", "model", "params", "teacher", "epochs"),
    "epoch": ("gen", "epoch", "epochs", "train_loss", "train_err", "test_loss", "test_err", "lr",
              "seconds", "samples_per_s", "diagnostics"),
    "gen_end": ("gen", "final", "val_min", "checkpoint"),   # val_min: minima of validation metrics only
    "ensemble": ("k", "members", "test_err"),
    "heartbeat": (),
    "log": ("level", "message"),
    "error": ("message",),
    "run_end": ("status", "error"),
}
END_STATUSES = ("ok", "failed", "cancelled", "preempted")   # preempted: stopped to be requeued (Slurm)

# What readers rely on, checked field by field at read time (`check_event`): (field, types,
# required). A field not listed is not checked; None passes where None is among the types.
_INT, _NUM, _STR, _OPT = (int,), (int, float), (str,), (type(None),)
FIELD_TYPES = {
    "*": (("seq", _INT, True), ("kind", _STR, False), ("ts", _NUM, False), ("run", _STR, False)),
    "run_start": (("experiment", _STR, False), ("config_hash", _STR + _OPT, False), ("host", _STR + _OPT, False),
                  ("pid", _INT + _OPT, False), ("pid_start", _INT + _OPT, False), ("device", _STR + _OPT, False),
                  ("seed", _INT + _OPT, False), ("group_hash", _STR + _OPT, False)),
    "gen_start": (("gen", _INT, True), ("role", _STR + _OPT, False), ("objective", _STR + _OPT, False),
                  ("model", _STR + _OPT, False), ("params", _INT + _OPT, False), ("teacher", _INT + _OPT, False),
                  ("epochs", _INT, False), ("metric", _STR, False)),
    "epoch": (("gen", _INT, True), ("epoch", _INT, True), ("epochs", _INT, False), ("seconds", _NUM + _OPT, False),
              ("lr", _NUM + _OPT, False), ("train_loss", _NUM + _OPT, False), ("train_err", _NUM + _OPT, False),
              ("test_loss", _NUM + _OPT, False), ("test_err", _NUM + _OPT, False), ("test_ppl", _NUM + _OPT, False),
              ("val_err", _NUM + _OPT, False), ("val_ppl", _NUM + _OPT, False), ("samples_per_s", _NUM + _OPT, False),
              ("diagnostics", (dict,) + _OPT, False)),
    "gen_end": (("gen", _INT, True), ("final", (dict,) + _OPT, False), ("best", (dict,) + _OPT, False),
                ("seconds", _NUM + _OPT, False)),
    "ensemble": (("k", _INT, True), ("members", (list,), False), ("test_err", _NUM + _OPT, False),
                 ("test_ppl", _NUM + _OPT, False)),
    "log": (("level", _STR, False), ("message", _STR, False)),
    "error": (("message", _STR, False),),
    "run_end": (("status", _STR, True), ("error", _STR + _OPT, False)),
}
_NUMBERS_IN = {"gen_end": ("final", "best"), "epoch": ("diagnostics",)}   # dicts of numbers


def check_event(event) -> str | None:
    """None for an event readers can fold; else what is wrong, naming the field ("gen: expected
    an integer, found '1'")."""
    if not isinstance(event, dict):
        return f"expected a JSON object, found {type(event).__name__}"
    kind = event.get("kind")
    for name, types, required in FIELD_TYPES["*"] + FIELD_TYPES.get(kind if isinstance(kind, str) else "", ()):
        if name not in event:
            if required:
                return f"{name}: missing"
            continue
        value = event[name]
        if isinstance(value, bool) or not isinstance(value, types):   # bool is an int to Python, not here
            if not (value is None and type(None) in types):
                want = "an integer" if types[0] is int and float not in types else "a number" if float in types \
                    else "text" if types[0] is str else f"a {types[0].__name__}"
                return f"{name}: expected {want}{' or null' if type(None) in types else ''}, found {value!r:.40}"
        if name in ("seq", "gen", "epoch", "k") and value < (1 if name == "seq" else 0):
            return f"{name}: expected a non-negative integer, found {value}"
    if kind == "run_end" and event["status"] not in END_STATUSES:
        return f"status: expected one of {', '.join(END_STATUSES)}, found {event['status']!r:.40}"
    for name in _NUMBERS_IN.get(kind, ()):
        for key, value in (event.get(name) or {}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"{name}.{key}: expected a number or null, found {value!r:.40}"
    return None


def _clean(value):
    """JSON has no NaN/inf: write them as null so every reader can parse every line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def last_complete_seq(path: Path) -> tuple[int, int]:
    """(last seq, byte length of the complete lines) of an events file; (0, 0) if absent."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return 0, 0
    end = data.rfind(b"\n") + 1
    seq = 0
    for line in data[:end].splitlines():
        try:
            seq = max(seq, int(json.loads(line).get("seq", 0)))
        except (ValueError, AttributeError):
            continue
    return seq, end


class EventWriter:
    """Appends whole lines, each with one write() and a flush; thread-safe (heartbeats)."""

    def __init__(self, path: Path, run_id: str):
        self.path = Path(path)
        self.run_id = run_id
        # A run killed mid-write may leave a partial last line. No reader has consumed it
        # (readers take complete lines only), so cutting it keeps every reader's offset valid.
        self.seq, complete = last_complete_seq(self.path)
        if self.path.exists() and self.path.stat().st_size != complete:
            os.truncate(self.path, complete)
        self._lock = threading.Lock()
        self._file = open(self.path, "ab", buffering=0)

    def emit(self, kind: str, **payload) -> dict:
        with self._lock:
            self.seq += 1
            event = {"v": SCHEMA_VERSION, "seq": self.seq, "ts": round(time.time(), 3),
                     "run": self.run_id, "kind": kind, **_clean(payload)}
            try:
                self._write_line((json.dumps(event, separators=(",", ":")) + "\n").encode())
            except BaseException:
                self.seq -= 1   # not written: the next event takes its seq
                raise
            return event

    def _write_line(self, line: bytes) -> None:
        """The whole line or none of it: a short write is completed, and a write that fails
        midway (a full disk) is cut back to where the line began, so no line is ever half-left."""
        fd = self._file.fileno()
        start = os.fstat(fd).st_size
        done = 0
        try:
            while done < len(line):
                done += os.write(fd, line[done:])
        except BaseException:
            if done:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass   # the next start cuts the torn line (see __init__)
            raise

    def sync(self) -> None:
        with self._lock:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                os.fsync(self._file.fileno())
                self._file.close()


class EventDecoder:
    """Turns a byte stream of events into events: complete lines only, each `seq` once.

    Keeps ``offset`` (bytes consumed, complete lines only) and ``last_seq``. Used directly by
    remote followers that receive bytes from ``offset`` on, and by `EventReader` on local files.
    """

    def __init__(self, offset: int = 0, last_seq: int = 0):
        self.offset = offset
        self.last_seq = last_seq
        self.bad_lines = 0
        self.problems: list[tuple[int | None, str]] = []   # (line number, what is wrong) of skipped lines
        self.line = None if offset else 0   # complete lines consumed (unknown when starting mid-file)
        self._pending = b""

    def reset(self) -> None:
        """The file shrank or was replaced: read it again from 0, still dropping seen seqs."""
        self.offset = 0
        self.line = 0
        self._pending = b""

    def feed(self, chunk: bytes) -> list[dict]:
        """The new valid events of chunk; a line that is not one is skipped and kept in `problems`."""
        data = self._pending + chunk
        end = data.rfind(b"\n") + 1
        self._pending = data[end:]
        self.offset += end
        events = []
        for line in data[:end].split(b"\n")[:-1]:
            self.line = None if self.line is None else self.line + 1
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event, problem = None, "not JSON"
            else:
                problem = check_event(event)
            if problem is not None:
                self.bad_lines += 1
                self.problems.append((self.line, problem))
                continue
            seq = event["seq"]
            if seq <= self.last_seq:
                continue
            self.last_seq = seq
            events.append(event)
        return events


class EventReader:
    """Follows a local events.jsonl by byte offset. `poll()` returns the new events."""

    def __init__(self, path: Path, offset: int = 0, last_seq: int = 0):
        self.path = Path(path)
        self.decoder = EventDecoder(offset, last_seq)
        self._inode = None

    @property
    def offset(self) -> int:
        return self.decoder.offset

    @property
    def last_seq(self) -> int:
        return self.decoder.last_seq

    def poll(self, max_bytes: int | None = 1 << 24) -> list[dict]:
        """New complete events since the last poll (at most max_bytes read; None: all)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.decoder.offset:
                    self.decoder.reset()
                self._inode = st.st_ino
                f.seek(self.decoder.offset + len(self.decoder._pending))
                return self.decoder.feed(f.read(-1 if max_bytes is None else max_bytes))
        except FileNotFoundError:
            return []
        except OSError as exc:   # a directory, unreadable: nothing to read, and said once
            problem = (None, f"cannot be read ({exc.strerror or exc})")
            if problem not in self.decoder.problems:
                self.decoder.problems.append(problem)
            return []


def read_events_checked(path: Path) -> tuple[list[dict], list[tuple[int | None, str]]]:
    """(the valid complete events of a file in order, (line, problem) of each line skipped)."""
    reader = EventReader(path)
    events = reader.poll(max_bytes=None)
    return events, reader.decoder.problems


_WARNED: set = set()


def warn_skipped(path: Path, problems) -> list[str]:
    """One line on stderr per skipped line of a run's events (once per process), naming the
    run, the line and the field; the lines."""
    path = Path(path)
    lines = [f"{path.parent.parent.name}/{path.parent.name}: {path.name}" + (f" line {n}" if n else "")
             + f": {problem}; skipped (the run is marked damaged)" for n, problem in problems]
    for line in lines:
        if (str(path), line) not in _WARNED:
            _WARNED.add((str(path), line))
            try:
                print(f"warning: {line}", file=sys.stderr)
            except (OSError, ValueError):
                pass
    return lines


def read_events(path: Path) -> list[dict]:
    """All valid complete events of a file, in order; a warning on stderr for each line skipped."""
    events, problems = read_events_checked(path)
    warn_skipped(path, problems)
    return events


def dumps_events(events: Iterable[dict]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
