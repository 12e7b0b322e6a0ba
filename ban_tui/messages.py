"""Typed messages to the app: from the background watcher (a thread) and from the chain form.

The watcher folds events into each run's model itself; its messages say what changed, and the
app hands the changed runs to the views on a timer (at most ~10 times a second, through its
`runs` reactive: ban_tui.app), not once per message.
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
