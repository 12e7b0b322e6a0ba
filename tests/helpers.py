"""What the process-level tests share: the `ban` console script of this venv, the environment it
runs in, and waiting for a condition with a message that says what never happened."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
BAN = str(BIN / "ban")


def cli_env(**extra: str) -> dict:
    """Read at each call (the sshd fixture sets BAN_SSH_CONFIG): plain output, wide lines, one
    thread per engine, this venv's bin first on PATH (the Slurm and ssh paths start `ban` and
    `python` by name)."""
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def ban(*args, cwd, timeout: float = 120, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`ban ARGS` in `cwd`, its output captured as text."""
    return subprocess.run([BAN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env() if env is None else env, **kw)


def wait_until(predicate, timeout: float, what: str = "the condition", step: float = 0.1):
    """predicate()'s first truthy value, polled every `step` s; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
