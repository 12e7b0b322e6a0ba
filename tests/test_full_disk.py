"""A full disk mid-run leaves a reason, and the views survive it: a real engine on a real small
tmpfs (mounted here; the tests need root and skip with mount's own error otherwise), filled by a
real file while the engine trains."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import scheduler, spec
from engine.events import read_events

from helpers import ban, cli_env, digits_chain, wait_until


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


CONFIG = "[defaults]\nruns_dir = \"runs\"\n\n" + digits_chain("k", epochs=400, batch_size=64, generations=0, seeds=[0])


def start_engine(tmp_path: Path, mnt: Path) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "k.toml").write_text(CONFIG)
    root = mnt / "runs" / "k" / "r"
    root.mkdir(parents=True)
    with open(root / "stdout.log", "ab") as out, open(root / "stderr.log", "ab") as err:
        engine = subprocess.Popen([sys.executable, "-m", "engine", "run", "k.toml", "--experiment", "k", "--runs-dir",
                                   str(mnt / "runs"), "--run-id", "r"], cwd=tmp_path, env=cli_env(PYTHONUNBUFFERED="1"),
                                  stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    wait_until(lambda: (root / "events.jsonl").exists() and any(e["kind"] == "epoch" for e in read_events(root / "events.jsonl")),
               240, "a first epoch")
    return engine, root


def fill(mnt: Path, leave: int = 0) -> Path:
    """Fill the file system with one file, then give `leave` bytes back."""
    filler = mnt / "filler"
    with open(filler, "ab") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_a_disk_filled_mid_run_ends_the_run_failed_with_the_os_error_in_ban_show(tmp_path, tmpfs):
    engine, root = start_engine(tmp_path, tmpfs)
    fill(tmpfs, leave=64 << 10)   # room for a few event lines, not for checkpoints/last.pt
    assert engine.wait(240) == 1
    events = read_events(root / "events.jsonl")
    assert events[-1]["kind"] == "run_end" and events[-1]["status"] == "failed"
    assert "No space left on device" in events[-1]["error"] and events[-2]["kind"] == "error"
    assert (root / "events.jsonl").read_bytes().endswith(b"\n")
    assert not list(root.rglob("*.tmp"))   # the failed checkpoint write left nothing half-written
    shown = ban("show", str(root), cwd=tmp_path)
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr
    assert "status failed" in shown.stdout and "No space left on device" in shown.stdout, shown.stdout


def test_a_disk_left_full_gives_a_reason_and_the_views_no_traceback_nor_tmp_files(tmp_path, tmpfs):
    """The disk stays full: the engine ends as far as it can (its run_end, or nothing at all),
    and `ban show` says why either way; `ban ls` over a runs directory with a queued run on the
    full disk prints its table and leaves no temp file."""
    (tmp_path / "q.toml").write_text(CONFIG)
    queue = tmpfs / "queue"   # another runs directory on the same disk, a run queued in it, no scheduler yet
    exp = spec.load(tmp_path / "q.toml").experiments["k"]
    scheduler.enqueue(queue / "k" / "waiting", spec.dumps_experiment(exp), [sys.executable, "-c", "pass"])
    engine, root = start_engine(tmp_path, tmpfs)
    fill(tmpfs)
    assert engine.wait(240) == 1
    assert (root / "events.jsonl").read_bytes().endswith(b"\n")   # no line half-left
    shown = ban("show", str(root), cwd=tmp_path)
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr
    ended = read_events(root / "events.jsonl")[-1]
    if ended["kind"] == "run_end":
        assert "No space left on device" in ended["error"] and "No space left on device" in shown.stdout
    else:
        assert f"engine died: no space left on {tmpfs}" in shown.stdout, shown.stdout
    listed = ban("ls", "--runs-dir", str(queue), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stdout + listed.stderr and "k/waiting" in listed.stdout, listed.stdout + listed.stderr
    wait_until(lambda: not scheduler.pid_alive(*(lambda r: (r.get("pid"), r.get("pid_start")))(
        scheduler.read_json(queue / scheduler.SPAWNED) or {})), 60, "the scheduler it started to exit")
    assert not [p for p in tmpfs.rglob("*") if ".tmp" in p.name], list(tmpfs.rglob("*"))
