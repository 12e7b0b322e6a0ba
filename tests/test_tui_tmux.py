"""ban-tui in a real terminal: started in tmux, driven with keys (send-keys), read back from the
screen (capture-pane)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_tui_support import CONFIG, copy_runs

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (.ci/run installs it)")


class Terminal:
    """One tmux session on a private server socket (so no user session is touched)."""

    def __init__(self, argv: list[str], cwd: Path, size=(120, 40)):
        self.socket = f"ban-tui-test-{os.getpid()}"
        env = {**os.environ, "TZ": "UTC", "TERM": "xterm-256color"}
        self.tmux(["new-session", "-d", "-s", "t", "-x", str(size[0]), "-y", str(size[1]), "-c", str(cwd)]
                  + argv, env=env)

    def tmux(self, args, env=None):
        return subprocess.run(["tmux", "-L", self.socket] + args, capture_output=True, text=True, env=env)

    def keys(self, *keys: str) -> None:
        self.tmux(["send-keys", "-t", "t"] + list(keys))

    def screen(self) -> str:
        return self.tmux(["capture-pane", "-p", "-t", "t"]).stdout

    def wait(self, *texts: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{texts} not on the screen after {timeout}s:\n{screen}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.tmux(["has-session", "-t", "t"]).returncode == 0

    def close(self) -> None:
        self.tmux(["kill-server"])


def test_drive_ban_tui_with_keys_in_tmux(tmp_path):
    (tmp_path / "experiments.toml").write_text(CONFIG)
    copy_runs(tmp_path)
    entry = Path(sys.executable).with_name("ban-tui")
    argv = [str(entry)] if entry.exists() else [sys.executable, "-m", "ban_tui.app"]
    term = Terminal(argv + ["experiments.toml", "--runs-dir", "runs"], tmp_path)
    try:
        term.wait("Experiments", "tiny", "✓ valid", "^s Save")
        term.keys("F3")
        # the runs table has the focus once its bindings are in the footer: only then press Enter
        term.wait("tiny/20251129-013320-s0-0k01", "✓ ok", "✗ failed", "■ cancelled", "✗ dead", "space Mark")
        term.keys("Enter")                                   # the first run: the finished one
        screen = term.wait("✓ OK", "Teacher", "BAN-2", "Ens*2", "grad_correct", "esc Back")
        assert "tiny/20251129-013320-s0-0k01" in screen
        term.keys("Escape")                                  # (a lone Escape: keys after it would read as alt+)
        term.wait("space Mark")
        term.keys("Down", "Down", "Enter")                    # the failed run
        term.wait("✗ FAILED", "the run failed: /nonexistent/data/train.npz")
        term.keys("F2")
        term.wait("^n New chain", "✓ valid")
        term.keys("C-n")                                      # a new chain in the form
        term.wait("chain-1", "(unsaved)")                    # the title marks unsaved edits
        term.keys("C-q")                                      # unsaved edits: it asks (issue 17)
        term.wait("unsaved edits. Quit?", "Discard (d)")
        term.keys("d")                                        # quit without saving
        deadline = time.monotonic() + 15
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not term.alive(), "ban-tui did not exit on ctrl+q"
        assert (tmp_path / "experiments.toml").read_text() == CONFIG   # nothing saved
    finally:
        term.close()
