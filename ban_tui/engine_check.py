"""What `ban validate` and `ban run` check with torch, in a child process (ban_tui never imports
torch): `python -m engine check FILE` (engine/check.py) for configs that name models by
reference or read the user's image files. Nothing to check: no process, no torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine import spec
from engine.check import EXIT_CONFIG, needs_check


def torch_problems(file: Path, config: spec.Config) -> list[str]:
    """The problem lines of `python -m engine check FILE` ([] when there is nothing to check)."""
    if not any(needs_check(e) for e in config.experiments.values()):
        return []
    r = subprocess.run([sys.executable, "-m", "engine", "check", str(file)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    if r.returncode == 0:
        return []
    if r.returncode == EXIT_CONFIG and lines:
        return lines
    return [f"{file}: the model and data check (python -m engine check) failed: "
            + (lines[-1] if lines else f"exit status {r.returncode}")]
