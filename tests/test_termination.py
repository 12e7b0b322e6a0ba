"""Every command ends: a foreground `ban run` whose queued run is removed says so and stops;
`slots` is bounded by what a host can have (in validation and in a runs directory's
.slots.json); SIGINT right after submission cancels what was submitted (real `ban` processes,
real engines on digits)."""
from __future__ import annotations

import json
import signal
import subprocess

from engine import scheduler
from engine.events import read_events

from helpers import BAN, ban, cli_env, digits_chain, wait_until


def config(seeds, slots: int, epochs: int = 1) -> str:
    return ("[defaults]\nruns_dir = \"runs\"\n\n" + digits_chain("t", epochs=epochs, batch_size=256, generations=0, seeds=seeds)
            + f"\n[hosts.local]\nslots = {slots}\n")


def test_a_followed_run_that_is_removed_is_said_so_and_the_follow_stops(tmp_path):
    (tmp_path / "t.toml").write_text(config([0, 1], slots=1, epochs=10))
    runs = tmp_path / "runs"
    follower = subprocess.Popen([BAN, "run", "t.toml"], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)

    def second_queued():   # both submitted: the first on the one slot, the second waiting behind it
        if len(list(runs.glob("t/*/experiment.toml"))) == 2 and len(list(runs.glob("t/*/slot.json"))) == 1:
            return [r for r, _ in scheduler.queued(runs)]
    try:
        waiting = wait_until(second_queued, 120, "the second run queued")[0]
        removed = ban("rm", str(waiting), cwd=tmp_path, env=cli_env())
        assert removed.returncode == 0, removed.stderr
        out, _ = follower.communicate(timeout=300)
    finally:
        follower.kill()
    assert f"t/{waiting.name} (removed)" in out, out
    assert "resume with" not in out


def test_slots_are_bounded_by_what_a_host_can_have(tmp_path):
    (tmp_path / "t.toml").write_text(config([0], slots=100_000_000))
    checked = ban("validate", "t.toml", cwd=tmp_path, env=cli_env())
    assert checked.returncode == 2 and "t.toml:" in checked.stderr
    assert "hosts.local.slots: expected an integer <= 1024" in checked.stderr, checked.stderr
    (tmp_path / "g.toml").write_text(config([0], slots=1).replace("slots = 1", "gpus = [0, 5000]"))
    checked = ban("validate", "g.toml", cwd=tmp_path, env=cli_env())
    assert checked.returncode == 2 and "GPU indices (0 to 1023)" in checked.stderr, checked.stderr
    runs = tmp_path / "runs"   # a .slots.json written before the bound (or by hand) is read within it
    runs.mkdir()
    (runs / scheduler.SLOTS_FILE).write_text(json.dumps({"slots": 100_000_000}))
    assert len(scheduler.host_slots(runs)) == scheduler.MAX_SLOTS
    (runs / scheduler.SLOTS_FILE).write_text(json.dumps({"slots": "many"}))
    assert scheduler.host_slots(runs)   # what the machine has
    listed = ban("ls", "--runs-dir", "runs", cwd=tmp_path, env=cli_env())
    assert listed.returncode == 0, listed.stderr


def test_sigint_right_after_submission_cancels_every_run_submitted(tmp_path):
    """SIGINT as soon as both engines are started (they may still be importing, before their
    signal handlers): each run is cancelled by its engine or, not started yet, taken out; none is
    left broken or dead."""
    (tmp_path / "t.toml").write_text(config([0, 1], slots=2, epochs=50))
    runs = tmp_path / "runs"
    proc = subprocess.Popen([BAN, "run", "t.toml"], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        roots = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(
            [p.parent for p in runs.glob("t/*/slot.json") if (scheduler.read_json(p) or {}).get("pid")]),
            120, "two engines started", step=0.01)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    for root in roots:
        if not root.exists():
            assert f"t/{root.name}: taken out of the queue (it never started)" in out, out
            continue
        wait_until(lambda: read_events(root / "events.jsonl") and read_events(root / "events.jsonl")[-1]["kind"] == "run_end",
                   120, f"{root.name} to end")
        assert read_events(root / "events.jsonl")[-1]["status"] == "cancelled", out
