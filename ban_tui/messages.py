"""Typed messages from the background watcher (a thread) to the app and its widgets.

The watcher folds events into each run's model itself; the messages say what changed, and the
app redraws what is dirty on a timer (at most ~10 times a second), not once per message.
"""
from __future__ import annotations

from pathlib import Path

from textual.message import Message


class RunAdded(Message):
    """A run directory appeared under the runs directory (or was launched from the app)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir


class RunEvents(Message):
    """New events of one run, already folded into its model."""

    def __init__(self, run_dir: Path, events: list[dict]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.events = events


class RunStderr(Message):
    """New lines of a run's stderr.log."""

    def __init__(self, run_dir: Path, lines: list[str]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.lines = lines


class ConfigChanged(Message):
    """The config as edited in the form changed; `problems` are the validator's for that text and
    `dirty` says whether it differs from the file."""

    def __init__(self, text: str, problems: list, dirty: bool) -> None:
        super().__init__()
        self.text = text
        self.problems = problems
        self.dirty = dirty
