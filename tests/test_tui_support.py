"""Shared helpers of the TUI tests (no tests here): recorded runs and waiting on a live app."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from engine import spec
from engine.events import EventWriter
from engine.runs import RunPaths, process_start_time
from helpers import digits_chain

FIXTURES = Path(__file__).parent / "fixtures" / "events" / "recorded"
OK = "tiny/20251129-013320-s0-0k01"
CANCELLED = "tiny/20251129-020000-s0-0c01"
FAILED = "broken-data/20251129-021500-s0-0f01"
DEAD = "tiny/20251129-023000-s0-0d01"
STALE = "tiny/20251129-024500-s0-0s01"

# the comments and the [defaults] table are there to be kept by the form's saves
CONFIG = '# experiments for the TUI tests\n[defaults]\nruns_dir = "runs"   # kept where it is\n\n' + digits_chain(
    "tiny", epochs=2, generations=2, objective="ban", ensembles=[2])


def copy_runs(dest: Path, stale: bool = False) -> Path:
    """The recorded runs under dest/runs; with stale=True also a run whose engine is alive (this
    test process) but wrote nothing for a long time: the dead run pointed at our pid."""
    runs = Path(dest) / "runs"
    shutil.copytree(FIXTURES, runs)
    if stale:
        lines = (runs / DEAD / "events.jsonl").read_text().splitlines()
        start = json.loads(lines[0])
        start.update(pid=os.getpid(), pid_start=process_start_time(os.getpid()))
        (runs / STALE).mkdir(parents=True)
        (runs / STALE / "events.jsonl").write_text("\n".join([json.dumps(start)] + lines[1:]) + "\n")
    return runs


def cells(table) -> list[list[str]]:
    """A DataTable's rows as plain strings."""
    return [[str(getattr(c, "plain", c)) for c in table.get_row(key)] for key in table.rows]


async def wait_for(pilot, predicate, timeout: float = 10.0, step: float = 0.05):
    """Pause the app until predicate() is truthy; its value, or AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(step)


async def built(pilot) -> None:
    """Wait until the main screen has mounted what it mounts after the first frame (the chain
    form, the hidden tabs) and laid it out: a click before that finds nothing to click."""
    await wait_for(pilot, lambda: pilot.app.main_screen.built)
    await pilot.pause()


def make_run(runs_dir: Path, run_id: str, seed: int, errs: list[list[float]], ens: float | None = None,
             epochs: int = 2, lr: float = 0.1, objective: str = "ban", name: str = "tiny") -> Path:
    """A finished chain: the snapshot the engine writes (spec.dumps_experiment), then run_start,
    and per generation gen_start, one epoch event per test error in errs[g], gen_end; Ens*2."""
    text = (CONFIG.replace("epochs = 2", f"epochs = {epochs}\noptimizer = {{ lr = {lr} }}").replace('"ban"', f'"{objective}"')
            .replace('name = "tiny"', f'name = "{name}"'))
    exp = spec.loads(text).experiments[name]
    root = runs_dir / name / run_id
    root.mkdir(parents=True)
    RunPaths(root).snapshot.write_text(spec.dumps_experiment(exp))
    w = EventWriter(RunPaths(root).events, run_id)
    w.emit("run_start", experiment=name, config_hash=exp.config_hash(), host="box", pid=None, pid_start=None,
           versions={}, device="cpu", seed=seed)
    for g, series in enumerate(errs):
        w.emit("gen_start", gen=g, role="student" if g else "teacher", objective=objective if g else "ce",
               model="cnn-small", params=1000, teacher=g - 1 if g else None, epochs=len(series))
        for e, err in enumerate(series, 1):
            w.emit("epoch", gen=g, epoch=e, epochs=len(series), train_loss=1.0 / e, train_err=err / 2,
                   test_loss=1.0, test_err=err, lr=lr, seconds=1.0, diagnostics={})
        w.emit("gen_end", gen=g, final={"test_err": series[-1]}, best={"test_err": series[-1]}, checkpoint="x")
    if ens is not None:
        w.emit("ensemble", k=2, members=[1, 2], test_err=ens)
    w.emit("run_end", status="ok")
    w.close()
    return root.resolve()
