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


SGD = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}   # the paper's optimizer, a small lr


def toml_value(value) -> str:
    """A Python value as the TOML the tests' configs are written in (inline tables on one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def digits_chain(name: str, dataset: dict | None = None, generations_tables: tuple[dict, ...] = (), **keys) -> str:
    """One [[experiment]] table training cnn-small on scikit-learn's digits (no download; more
    keys of the data set in `dataset`), then `keys` one per line in the order given, then one
    [[experiment.generation]] table per dict of `generations_tables`:
    `digits_chain("t", epochs=1, generations=2)`."""
    lines = ["[[experiment]]", f'name = "{name}"', f"dataset = {toml_value({'name': 'digits', **(dataset or {})})}",
             'model = "cnn-small"'] + [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n" + generation_tables(*generations_tables)


def generation_tables(*tables: dict) -> str:
    """One [[experiment.generation]] table per dict, its keys one per line in the order given."""
    return "".join("\n[[experiment.generation]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
                   for table in tables)


def loop_host(workdir, python: str = sys.executable, name: str = "loop", **keys) -> str:
    """A [hosts.NAME] table reaching the loopback sshd (tests/sshd.py) as host `loop`."""
    lines = [f"[hosts.{name}]", 'ssh = "loop"', f'workdir = "{workdir}"', f'python = "{python}"']
    return "\n" + "\n".join(lines + [f"{k} = {toml_value(v)}" for k, v in keys.items()]) + "\n"



def hold(directory, point: str = "") -> Path:
    """A HOLD file in `directory` (a run's, or an experiment's under a runs dir: every run of it):
    its runs pause after each epoch from `point` on ("G E": generation G's epoch E; "" every epoch)
    until the file goes (engine.generation.wait_while_held). A test that acts on a running chain
    holds it, so the chain is running by construction, not by being slow."""
    gate = Path(directory) / "HOLD"
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.write_text(point)
    return gate


def held(run_dir, gen: int | None = None) -> bool:
    """The run has written that it is held (after an epoch of generation `gen`, or of any)."""
    import re
    from engine.events import read_events
    path = Path(run_dir) / "events.jsonl"
    return path.exists() and any(
        e["kind"] == "log" and (m := re.match(r"held after epoch \d+ of generation (\d+)", e.get("message", "")))
        and (gen is None or int(m.group(1)) == gen) for e in read_events(path))
