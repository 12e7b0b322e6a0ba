"""The queue has no window and a slot is never held twice (engine/scheduler.py), with real
processes: real schedulers (`python -m engine schedule`), real engines training digits, shell
loops holding slots, and schedulers that SIGKILL themselves at each step of a start
(BAN_SCHEDULER_DIE_AT, the scheduler's documented test hook)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import scheduler, spec
from engine.events import read_events
from engine.runs import pid_alive

from helpers import cli_env, digits_chain, wait_until


def holding(gate: Path) -> list[str]:
    """argv of a process that holds its slot while `gate` exists."""
    return ["sh", "-c", f'while [ -e "{gate}" ]; do sleep 0.005; done']


def started_by_now(root: Path):
    rec = scheduler.read_json(root / scheduler.SLOT)
    return isinstance(rec, dict) and rec.get("pid")


def test_a_run_queued_while_the_scheduler_exits_is_always_started(tmp_path, monkeypatch):
    """200 tries over the scheduler's exit window: each run is queued (the slot is held) at a
    moment that sweeps from the previous start by the scheduler to well after that scheduler has
    exited (it lingers BAN_SCHEDULE_INTERVAL = 0.05 s after its last start); then the slot frees
    and nothing but a scheduler can start the run. Every one of them starts."""
    monkeypatch.setenv("BAN_SCHEDULE_INTERVAL", "0.05")   # the spawned schedulers read it
    runs = tmp_path / "runs"
    scheduler.configure(runs, None, 1)
    gates = tmp_path / "gates"
    gates.mkdir()
    tries, queued, stalls = 200, 0, []
    prev_gate = gates / "g-start"
    prev_gate.touch()
    first = scheduler.submit(runs / "w" / "start", "", holding(prev_gate), cwd=str(tmp_path))
    assert first.get("pid")   # the slot was free: started at once
    try:
        for i in range(tries):
            gate = gates / f"g{i}"
            gate.touch()
            root = runs / "w" / f"r{i:03d}"
            if i:   # sweep 0 .. 0.1 s after the scheduler started the previous run
                time.sleep((i % 40) * 0.0025)
            got = scheduler.submit(root, "", holding(gate), cwd=str(tmp_path))
            queued += "position" in got
            prev_gate.unlink()   # the slot frees: only a scheduler can start root now
            try:
                wait_until(lambda: started_by_now(root), 30, f"try {i}: a scheduler to start {root.name}", step=0.002)
            except AssertionError:
                stalls.append(i)
                break
            prev_gate = gate
    finally:
        for g in gates.iterdir():
            g.unlink()
    assert stalls == [] and queued == tries, (stalls, queued)


CONFIG = "[defaults]\nruns_dir = \"runs\"\n\n" + digits_chain("k", epochs=1, batch_size=256, generations=0, seeds=[0])


def enqueue_engine_and_observer(tmp_path: Path) -> tuple[Path, Path]:
    """A real engine run, then an observer (a shell copying the engine's events.jsonl when it
    starts), queued on a one-slot runs directory, nothing started."""
    from ban_tui import launch
    (tmp_path / "k.toml").write_text(CONFIG)
    exp = spec.load(tmp_path / "k.toml").experiments["k"]
    runs = (tmp_path / "runs").resolve()
    scheduler.configure(runs, None, 1)
    engine, observer = runs / "k" / "engine", runs / "k" / "observer"
    argv = launch.engine_command(engine / "experiment.toml", "k", 0, runs, engine.name)
    scheduler.enqueue(engine, spec.dumps_experiment(exp), argv, cwd=str(tmp_path))
    seen = ["sh", "-c", f'cat "{engine}/events.jsonl" > "{observer}/seen"; touch "{observer}/done"']
    scheduler.enqueue(observer, "", seen, cwd=str(tmp_path))
    return engine, observer


@pytest.mark.parametrize("step", ["claim", "claimed", "fork", "exec", "recorded"])
def test_a_scheduler_killed_at_any_step_of_a_start_never_puts_two_engines_on_one_slot(tmp_path, step, monkeypatch):
    """The scheduler SIGKILLs itself at `step` of starting the engine; the next `ban` command's
    scheduler goes on. The engine trains once, to the end, and the run queued behind it on the one
    slot starts only after it ended (it finds the engine's run_end)."""
    engine, observer = enqueue_engine_and_observer(tmp_path)
    runs = engine.parent.parent
    dying = subprocess.run([sys.executable, "-m", "engine", "schedule", str(runs)], cwd=runs, capture_output=True,
                           text=True, timeout=120, env=cli_env(BAN_SCHEDULE_INTERVAL="0.1", BAN_SCHEDULER_DIE_AT=step))
    assert dying.returncode == -9, (dying.returncode, dying.stderr)   # it killed itself at `step`
    if step != "claim":   # the claim was written before the engine started
        assert json.loads((engine / scheduler.SLOT).read_text())["slots"] == ["cpu0"]
    for k, v in cli_env(BAN_SCHEDULE_INTERVAL="0.1").items():
        monkeypatch.setenv(k, v)
    assert scheduler.ensure_scheduler(runs)   # what the next `ban` command does
    wait_until(lambda: (observer / "done").exists(), 300, "the observer to start after the engine", step=0.5)
    events = read_events(engine / "events.jsonl")
    assert [e["kind"] for e in events if e["kind"] in ("run_start", "run_end")] == ["run_start", "run_end"]
    assert events[-1]["status"] == "ok"   # trained once, to the end
    assert read_events(observer / "seen")[-1]["kind"] == "run_end"   # one slot: it started after the engine ended
    rec = json.loads((engine / scheduler.SLOT).read_text())
    assert rec["slots"] == ["cpu0"] and rec["engine"][0] == events[0]["pid"]   # the engine confirmed its claim


def test_an_engine_whose_claim_is_gone_refuses_to_run_and_touches_nothing(tmp_path):
    root, _ = enqueue_engine_and_observer(tmp_path)
    scheduler.write_slot(root, {"slots": ["cpu0"], "claim": "another", "claimer": [1, 1], "pid": None})
    marker = json.loads((root / scheduler.QUEUED).read_text())
    before = sorted(p.name for p in root.iterdir())
    done = subprocess.run(marker["argv"], env=cli_env(BAN_CLAIM="mine"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "the slot claim this engine was started under is gone" in done.stderr and str(root) in done.stderr
    assert sorted(p.name for p in root.iterdir()) == before   # no events, no lock, no pid file
    # and the stale claim of a dead claimer is revoked by the next start: the run starts once, on its slot
    (root / scheduler.SLOT).unlink()
    scheduler.write_slot(root, {"slots": ["cpu0"], "claim": "old", "claimer": [2 ** 22 + 7, 1], "pid": None})
    assert not pid_alive(2 ** 22 + 7, 1) and scheduler.busy_slots(root.parent.parent) == set()
    scheduler.revoke_stale(root.parent.parent)
    assert not (root / scheduler.SLOT).exists()
