"""Run notes and tags: a small file of the run directory, `notes.json`, written by the CLI and the
TUI only (the engine writes events.jsonl and never this file).

    {"v": 1, "tags": ["baseline", "lr-sweep"], "notes": [{"ts": 1764380000.0, "text": "..."}]}

Every change reads the file, changes it and writes it whole to a temp file renamed over it, under
an exclusive lock (flock) of the run directory, so two writers never lose each other's change and a
reader never sees half a file. A file that is not this shape is refused with its path and what
is wrong, never overwritten. No torch, no textual.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FILE = "notes.json"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class NotesError(ValueError):
    pass


@dataclass
class Notes:
    tags: list[str] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"v": 1, "tags": self.tags, "notes": self.notes}


def path(run_dir: Path) -> Path:
    return Path(run_dir) / FILE


def read(run_dir: Path) -> Notes:
    """The run's notes and tags (empty when it has no notes.json); NotesError when the file is bad."""
    p = path(run_dir)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return Notes()
    except (OSError, ValueError) as exc:
        raise NotesError(f"{p}: not a notes file: {exc}") from None
    if not isinstance(data, dict):
        raise NotesError(f"{p}: expected a JSON object, found {type(data).__name__}")
    tags, notes = data.get("tags", []), data.get("notes", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise NotesError(f"{p}: key 'tags': expected a list of strings, found {tags!r}")
    if not isinstance(notes, list) or not all(isinstance(n, dict) and isinstance(n.get("text"), str) for n in notes):
        raise NotesError(f"{p}: key 'notes': expected a list of {{\"ts\": ..., \"text\": \"...\"}}, found {notes!r}")
    return Notes(tags, notes)


def write(run_dir: Path, notes: Notes) -> None:
    """The whole file, atomically (temp file in the run directory, then rename)."""
    p = path(run_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(notes.to_json(), f, indent=1)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        os.unlink(tmp)
        raise


@contextmanager
def changing(run_dir: Path):
    """Yield the run's Notes under the lock; written back when the block ends without error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotesError(f"{run_dir}: not a run directory")
    fd = os.open(run_dir, os.O_RDONLY)   # the lock is on the run directory: no file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        notes = read(run_dir)
        yield notes
        write(run_dir, notes)
    finally:
        os.close(fd)


def add_note(run_dir: Path, text: str, now: float | None = None) -> Notes:
    text = text.strip()
    if not text:
        raise NotesError("a note needs some text")
    with changing(run_dir) as notes:
        notes.notes.append({"ts": round(time.time() if now is None else now, 3), "text": text})
    return notes


def parse_changes(changes: list[str]) -> list[tuple[str, str]]:
    """'+name' or 'name' adds, '-name' removes: [(op, name)]; NotesError naming a bad one."""
    out = []
    for c in changes:
        op, name = (c[0], c[1:]) if c[:1] in "+-" else ("+", c)
        if not _TAG.match(name):
            raise NotesError(f"tag {c!r}: expected +name or -name, the name of letters, digits and . _ + - "
                             "(starting with a letter or digit, at most 64 characters)")
        out.append((op, name))
    return out


def change_tags(run_dir: Path, changes: list[str]) -> Notes:
    """Apply +name/-name in order; tags stay unique, in the order first added."""
    parsed = parse_changes(changes)
    with changing(run_dir) as notes:
        for op, name in parsed:
            if op == "+" and name not in notes.tags:
                notes.tags.append(name)
            elif op == "-" and name in notes.tags:
                notes.tags.remove(name)
    return notes


def tags_str(run_dir: Path) -> str:
    """The tags for a table cell: 'a, b', '-' when none, '?' when notes.json is unreadable."""
    try:
        return ", ".join(read(run_dir).tags) or "-"
    except NotesError:
        return "?"
