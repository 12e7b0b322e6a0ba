"""The runs directory of a host, on the host: the engine's versions, find and list runs (each
run's events folded there, so only the summaries travel), the load of its slots, and queueing a
chain on its engine.scheduler. Paths are as the host's shell means them (relative to the home,
or ~/...)."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from engine import scheduler
from engine.events import SCHEMA_VERSION
from engine.runs import RunPaths, find_run, list_runs, load_state
from ban_tui.host.wire import here


def engine_versions() -> dict:
    """The events schema and the installed `ban` of the Python running this (None: not installed
    as a package). Called on both ends, so "compatible" means the same thing at both."""
    from importlib.metadata import PackageNotFoundError, version   # 25 ms: not at every start of the app
    try:
        installed = version("ban")
    except PackageNotFoundError:
        installed = None
    return {"schema": SCHEMA_VERSION, "version": installed}


def find_here(runs_dir: str, ref: str) -> str:
    return str(find_run(runs_dir, ref))


def list_here(runs_dir: str) -> list[dict]:
    """Every run with its status (which needs this machine's /proc) and its folded state."""
    scheduler.ensure_scheduler(runs_dir)   # queued runs there: make sure they will start
    out = []
    for d in list_runs(runs_dir):
        s = load_state(d)
        out.append({"dir": str(d), "status": s.status(), "state": dataclasses.asdict(s)})
    return out


def load_here(runs_dir: str) -> dict:
    return scheduler.load(runs_dir)


def submit_here(req: dict) -> dict:
    """Queue one chain (its snapshot and argv in `req`); a run started at once is waited for up
    to req["wait"] seconds until its first event, so one that dies at once says so ("died")."""
    at = lambda p: str(here(p))   # noqa: E731 - the host's paths: relative to the home, or ~/...
    cwd = at(req["cwd"])
    os.makedirs(cwd, exist_ok=True)
    runs, root = Path(at(req["runs_dir"])), Path(at(req["root"]))
    scheduler.configure(runs, req["gpus"], req["slots"])
    argv = [at(w) if i in req["paths"] else os.path.expanduser(w) for i, w in enumerate(req["argv"])]
    got = scheduler.submit(root, req["snapshot"], argv, req["need"], cwd)
    deadline = time.time() + req["wait"]

    def first_event() -> bool:
        try:
            return RunPaths(root).events.stat().st_size > 0
        except OSError:
            return False

    while "pid" in got and time.time() < deadline and not first_event():
        if not scheduler.pid_alive(got["pid"], got["pid_start"]):
            tail = RunPaths(root).stderr.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
            got["died"] = tail[0]
            break
        time.sleep(0.2)
    got["dir"] = str(root)
    return got
