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
            self._file.write((json.dumps(event, separators=(",", ":")) + "\n").encode())
            return event

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
        self._pending = b""

    def reset(self) -> None:
        """The file shrank or was replaced: read it again from 0, still dropping seen seqs."""
        self.offset = 0
        self._pending = b""

    def feed(self, chunk: bytes) -> list[dict]:
        data = self._pending + chunk
        end = data.rfind(b"\n") + 1
        self._pending = data[end:]
        self.offset += end
        events = []
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                seq = int(event["seq"])
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1
                continue
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


def read_events(path: Path) -> list[dict]:
    """All complete events of a file, in order."""
    return EventReader(path).poll(max_bytes=None)


def dumps_events(events: Iterable[dict]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
