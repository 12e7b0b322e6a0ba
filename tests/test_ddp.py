"""DDP on the CPU: `torchrun --nproc-per-node 2 -m engine run` (gloo) against one process.

Every rank draws the same global batch of 64 and trains on its half, with the loss weighted so
that DDP's gradient average is the gradient of the global batch; so two processes do the math of
one, except for BatchNorm: cnn-small normalises each rank's 32 samples with their own statistics
(SyncBatchNorm has no CPU implementation). That difference is real, not rounding, so the metrics
are compared with a tolerance: 3% relative on losses and 0.03 absolute on errors (11 of 359 test
images). Measured: 1.3% and 1 image on the teacher. A gradient scale wrong by 2x (the bug this
guards against) moves the teacher's test loss from 1.51 to 0.76 (x2) or 1.92 (x0.5).
"""
import json
import os
import subprocess
import sys

import pytest

from engine.events import read_events

CONFIG = """
[[experiment]]
name = "ddp"
dataset = { name = "digits", augment = false }
model = "cnn-small"
epochs = 2
batch_size = 64
optimizer = { lr = 0.05 }
generations = 1
objective = "ban"
ensembles = [1]
device = "cpu"
precision = "fp32"          # compared bit for bit: not bf16 on a bf16 CPU
seeds = [1]
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def engine(tmp_path, run_id, *head):
    argv = [sys.executable, *head, "-m", "engine", "run", "c.toml", "--experiment", "ddp", "--runs-dir", "runs",
            "--run-id", run_id]
    return subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)


def test_two_processes_do_the_math_of_one_and_only_rank_0_writes(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    two = engine(tmp_path, "two", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    one = engine(tmp_path, "one")
    assert one.returncode == 0, one.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "ddp").iterdir()) == ["one", "two"]

    events = {r: read_events(tmp_path / "runs" / "ddp" / r / "events.jsonl") for r in ("one", "two")}
    ev = events["two"]
    assert [e["seq"] for e in ev] == list(range(1, len(ev) + 1))
    kinds = [(e["kind"], e.get("gen", e.get("k"))) for e in ev if e["kind"] not in ("heartbeat", "log")]
    assert kinds == [("run_start", None), ("gen_start", 0), ("epoch", 0), ("epoch", 0), ("gen_end", 0),
                     ("gen_start", 1), ("epoch", 1), ("epoch", 1), ("gen_end", 1), ("ensemble", 1),
                     ("run_end", None)]
    assert ev[0]["world_size"] == 2 and events["one"][0]["world_size"] == 1
    assert ev[-1]["status"] == "ok"

    epochs = {r: [e for e in events[r] if e["kind"] == "epoch"] for r in events}
    for a, b in zip(epochs["one"], epochs["two"]):
        assert a["samples"] == b["samples"] == 1438          # the global batches, each sample once
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=0.03)
        assert abs(b["test_err"] - a["test_err"]) <= 0.03
        assert abs(b["train_err"] - a["train_err"]) <= 0.03
        assert b["lr"] == a["lr"]

    root = tmp_path / "runs" / "ddp" / "two"
    assert json.loads((root / "results.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["gen-0.pt", "gen-1.pt"]
    assert sorted(p.name for p in (root / "probs").iterdir()) == ["gen-0.npy", "gen-1.npy", "labels.npy"]
    assert "error" not in two.stderr.lower()
