"""`python -m engine` as a real process on a real digits chain: the run directory it leaves,
SIGKILL/SIGTERM and resume (the same numbers as an uninterrupted run), and one clear failure per
kind of bad input.

The chain: a ce teacher (2 epochs), a ban student (3 epochs, gradient clipping), a dkpp student (4 epochs, plateau
schedule) with a validation split, Ens*1 and Ens*2. One thread per process: runs are exactly
reproducible on the CPU, and small models do not gain from threads anyway.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import spec
from engine.events import KINDS, read_events
from engine.runs import RunPaths
from helpers import SGD, digits_chain, held, hold

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("BAN_DEBUG", None)

# precision fp32: compared bit for bit, not bf16 on a bf16 CPU
CHAIN = digits_chain("chain", dataset={"val_split": 0.1}, batch_size=64, optimizer=SGD, schedule="cosine",
                     ensembles=[1, 2], seeds=[3], device="cpu", precision="fp32", generations_tables=(
                         {"objective": "ce", "epochs": 2}, {"objective": "ban", "epochs": 3, "grad_clip": 5.0},
                         {"objective": "dkpp", "epochs": 4,
                          "schedule": {"name": "plateau", "gamma": 0.5, "threshold": 0.01}}))
EPOCHS = {0: 2, 1: 3, 2: 4}
TIMING = ("seconds", "samples_per_s")


def start(cwd: Path, *args) -> subprocess.Popen:
    out = open(cwd / f"out-{time.monotonic_ns()}.log", "wb")
    err_path = cwd / f"err-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=open(err_path, "wb"))
    proc.err_path = err_path
    return proc


def finish(proc, timeout=240) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    return rc, proc.err_path.read_text()


def run_chain(cwd: Path, run_id: str, config_text: str = CHAIN, experiment: str = "chain"):
    (cwd / "c.toml").write_text(config_text)
    return start(cwd, "run", "c.toml", "--experiment", experiment, "--runs-dir", "runs", "--run-id", run_id)


def wait_for(root: Path, predicate, proc, timeout=180) -> list[dict]:
    """Poll a run's events until predicate(events) holds (fail if the process ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_events(root / "events.jsonl")
        if predicate(events):
            return events
        assert proc.poll() is None, f"engine ended (rc {proc.returncode}) before the awaited event"
        time.sleep(0.01)
    raise AssertionError("timed out waiting for an event")


def epochs_of(events, gen):
    return [e for e in events if e["kind"] == "epoch" and e["gen"] == gen]


def numbers(events) -> dict:
    """Every reported number that must not depend on interruptions (not timings)."""
    out = {}
    for e in events:
        if e["kind"] == "epoch":
            key = ("epoch", e["gen"], e["epoch"])
            assert key not in out, f"epoch event {key} reported twice"
            out[key] = {k: v for k, v in e.items() if k not in ("v", "seq", "ts", "run", "kind") + TIMING}
        elif e["kind"] in ("gen_end", "ensemble"):
            key = (e["kind"], e.get("gen", e.get("k")))
            assert key not in out, f"{key} reported twice"
            out[key] = {k: v for k, v in e.items() if k in ("final", "val_min", "members", "test_err", "test_loss")}
    return out


def no_tmp_files(root: Path):
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the chain."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_chain(cwd, "ref")
    rc, err = finish(proc)
    assert rc == 0, err
    return cwd / "runs" / "chain" / "ref"


def test_complete_run_directory(reference):
    paths = RunPaths(reference)
    events = read_events(paths.events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert set(KINDS[e["kind"]]) <= set(e), e
    kinds = [(e["kind"], e.get("gen", e.get("k"))) for e in events if e["kind"] not in ("heartbeat", "log")]
    expected = [("run_start", None)]
    for g, n in EPOCHS.items():
        expected += [("gen_start", g)] + [("epoch", g)] * n + [("gen_end", g)] + ([("ensemble", g)] if g else [])
    assert kinds == expected + [("run_end", None)]
    assert events[0]["seed"] == 3 and events[0]["resumed"] is False and events[0]["device"] == "cpu"
    assert events[-1]["status"] == "ok" and events[-1]["error"] is None
    assert all("val_err" in e and "diagnostics" in e for e in events if e["kind"] == "epoch")

    snapshot = spec.load(paths.snapshot).experiments["chain"]
    assert snapshot.seeds == [3] and [g.objective for g in snapshot.generations] == ["ce", "ban", "dkpp"]
    assert int(paths.pid.read_text().split()[0]) == events[0]["pid"]
    assert not paths.last_checkpoint.exists()
    no_tmp_files(reference)

    # results.json agrees with the events
    results = json.loads(paths.results.read_text())
    ends = {e["gen"]: e for e in events if e["kind"] == "gen_end"}
    assert results["status"] == "ok" and results["seed"] == 3
    assert [g["gen"] for g in results["generations"]] == [0, 1, 2]
    for g in results["generations"]:
        assert g["final"] == ends[g["gen"]]["final"] and g["val_min"] == ends[g["gen"]]["val_min"]
        assert g["final"]["test_err"] == epochs_of(events, g["gen"])[-1]["test_err"]
        assert g["val_min"] == {k: min(e[k] for e in epochs_of(events, g["gen"])) for k in ("val_loss", "val_err")}
    ensembles = {e["k"]: e for e in events if e["kind"] == "ensemble"}
    assert {e["k"]: (e["members"], e["test_err"], e["test_loss"]) for e in results["ensembles"]} == \
        {k: (e["members"], e["test_err"], e["test_loss"]) for k, e in ensembles.items()}

    # Ens*2 is the mean of the stored probabilities of BAN-1 and BAN-2
    from engine.data import load
    data = load(snapshot.dataset, 3)
    probs = {g: np.load(paths.gen_probs(g)) for g in EPOCHS}
    for g, p in probs.items():
        assert p.dtype == np.float32 and p.shape == (len(data.test_y), 10)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
        assert np.mean(p.argmax(1) != data.test_y.numpy()) == ends[g]["final"]["test_err"]
    mean = (probs[1].astype(np.float64) + probs[2]) / 2
    assert ensembles[2]["members"] == [1, 2]
    assert ensembles[2]["test_err"] == np.mean(mean.argmax(1) != data.test_y.numpy())

    # the checkpoints load with weights_only=True and hold the models that gave those probabilities
    from engine.models import build
    for g in EPOCHS:
        saved = torch.load(paths.gen_checkpoint(g), weights_only=True)
        model = build("cnn-small", 10, 1)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        x = (data.test_x.float() / 255 - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
        with torch.no_grad():
            p = torch.softmax(model(x), 1).numpy()
        np.testing.assert_allclose(p, probs[g], atol=1e-4)


def test_no_minimum_of_a_test_metric_anywhere_in_the_run_directory(reference):
    """A minimum over epochs of a test number is selected on the test set: events, results.json
    and the checkpoints keep minima of validation metrics only, under `val_min`."""
    def keys(x, path=()):
        if isinstance(x, dict):
            for k, v in x.items():
                yield path + (str(k),)
                yield from keys(v, path + (str(k),))
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from keys(v, path)
    found = []
    docs = [(p.name, json.loads(line)) for p in [RunPaths(reference).events] for line in p.read_text().splitlines()]
    docs.append(("results.json", json.loads(RunPaths(reference).results.read_text())))
    docs += [(p.name, torch.load(p, weights_only=True)) for p in sorted((reference / "checkpoints").glob("*.pt"))]
    assert len(docs) > 20 and any(name.endswith(".pt") for name, _ in docs)
    minima = 0
    for name, doc in docs:
        doc = {k: v for k, v in doc.items() if k not in ("state_dict", "optimizer", "rng")} if name.endswith(".pt") else doc
        for path in keys(doc):
            if "best" in path[-1] or (len(path) > 1 and path[-2] == "val_min" and not path[-1].startswith("val_")):
                found.append((name, path))
            minima += len(path) > 1 and path[-2] == "val_min"
    assert found == [] and minima > 0


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The same chain, stopped twice: SIGTERM during BAN-1, resumed, then SIGKILL during BAN-2.
    Keeps what each stop left (events, last.pt, results) and a pristine copy of the run
    directory after the SIGKILL, which tests resume (or break) in copies of their own."""
    cwd = tmp_path_factory.mktemp("interrupted")
    root = cwd / "runs" / "chain" / "stopped"
    gate = hold(root.parent, "1 1")     # held after BAN-1's first epoch: running there by construction
    proc = run_chain(cwd, "stopped")
    wait_for(root, lambda ev: held(root, gen=1), proc)
    gate.unlink()                       # released, then signalled: it stops in BAN-1's second epoch
    os.kill(proc.pid, signal.SIGTERM)
    rc, err = finish(proc)
    term = {"rc": rc, "stderr": err, "events": read_events(root / "events.jsonl"),
            "last": torch.load(root / "checkpoints" / "last.pt", weights_only=True),
            "results": json.loads((root / "results.json").read_text())}

    gate = hold(root.parent, "2 1")
    proc = start(cwd, "resume", root)
    wait_for(root, lambda ev: held(root, gen=2), proc)
    os.kill(proc.pid, signal.SIGKILL)   # held in BAN-2: killed there by construction
    gate.unlink()
    proc.wait()
    killed = cwd / "killed" / "stopped"
    shutil.copytree(root, killed)
    return {"term": term, "killed": killed}


def resumable_copy(interrupted, tmp_path) -> Path:
    root = tmp_path / "runs" / "chain" / "stopped"
    shutil.copytree(interrupted["killed"], root)
    return root


def test_sigterm_finishes_the_step_checkpoints_and_ends_cancelled(interrupted):
    term = interrupted["term"]
    assert term["rc"] == 0 and term["stderr"].strip() == "", term["stderr"]
    assert term["events"][-1]["kind"] == "run_end" and term["events"][-1]["status"] == "cancelled"
    assert term["results"]["status"] == "cancelled"
    last = term["last"]
    assert last["gen"] == 1 and last["epoch"] in (1, 2) and last["step"] >= 1   # mid-epoch, after a whole step
    assert (last["step"] - 1) * 64 < last["running"]["n"] <= last["step"] * 64


def test_sigkill_in_generation_2_then_resume_gives_the_same_numbers(reference, interrupted, tmp_path):
    root = resumable_copy(interrupted, tmp_path)
    before = read_events(root / "events.jsonl")
    assert not any(e["kind"] in ("run_end", "gen_end") and e.get("gen") == 2 for e in before[len(interrupted["term"]["events"]):])
    assert torch.load(root / "checkpoints" / "last.pt", weights_only=True)["gen"] == 2

    rc, err = finish(start(tmp_path, "resume", root))
    assert rc == 0, err
    events = read_events(root / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["run"] for e in events] == ["stopped"] * len(events)
    starts = [e["gen"] for e in events if e["kind"] == "gen_start"]
    assert starts == [0, 1, 2]   # finished generations are not trained again
    assert [e["resumed"] for e in events if e["kind"] == "run_start"] == [False, True, True]
    assert [e["status"] for e in events if e["kind"] == "run_end"] == ["cancelled", "ok"]
    assert numbers(events) == numbers(read_events(reference / "events.jsonl"))
    ref = json.loads((reference / "results.json").read_text())
    got = json.loads((root / "results.json").read_text())
    assert [(g["final"], g["val_min"]) for g in got["generations"]] == [(g["final"], g["val_min"]) for g in ref["generations"]]
    assert got["ensembles"] == ref["ensembles"] and got["status"] == "ok"
    assert not (root / "checkpoints" / "last.pt").exists()
    no_tmp_files(root)


# ---- bad input: an error event, run_end failed, one stderr line, non-zero exit, no .tmp ----

def failed_run(root: Path, proc, code: int, *needles) -> list[dict]:
    rc, err = finish(proc)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    events = read_events(root / "events.jsonl")
    assert [e["kind"] for e in events[-2:]] == ["error", "run_end"]
    assert events[-2]["message"] == lines[0][len("error: "):]
    assert events[-1]["status"] == "failed" and events[-1]["error"] == events[-2]["message"]
    assert json.loads((root / "results.json").read_text())["status"] == "failed"
    no_tmp_files(root)
    return events


def launched(tmp_path, config_text, run_id="bad"):
    """Like the launcher: the run directory exists before the engine starts."""
    root = tmp_path / "runs" / "chain" / run_id
    root.mkdir(parents=True)
    return root, run_chain(tmp_path, run_id, config_text)


def test_unknown_model_in_a_hand_written_snapshot(tmp_path):
    root = tmp_path / "runs" / "chain" / "hand"
    root.mkdir(parents=True)
    (root / "experiment.toml").write_text(CHAIN.replace('model = "cnn-small"', 'model = "resnet-9000"'))
    failed_run(root, start(tmp_path, "resume", root), 2, "experiment.toml", "resnet-9000")


def test_class_count_mismatch_between_config_and_data(tmp_path):
    root, proc = launched(tmp_path, CHAIN.replace('val_split = 0.1', 'options = { num_classes = 5 }'))
    failed_run(root, proc, 2, "num_classes", "label 9")


def test_missing_data_root(tmp_path):
    root, proc = launched(tmp_path, CHAIN.replace('name = "digits", val_split = 0.1', f'name = "npz", root = "{tmp_path}/nowhere"'))
    failed_run(root, proc, 2, "nowhere")


def test_nan_loss(tmp_path):
    root, proc = launched(tmp_path, CHAIN.replace("lr = 0.05", "lr = 1e30"))
    events = failed_run(root, proc, 1, "generation 0 (Teacher): loss became")
    assert "at epoch 1 step" in events[-1]["error"]
    assert not (root / "checkpoints" / "gen-0.pt").exists()


def test_config_error_without_a_run_directory_writes_nothing(tmp_path):
    (tmp_path / "c.toml").write_text(CHAIN)
    rc, err = finish(start(tmp_path, "run", "c.toml", "--experiment", "chian", "--runs-dir", "runs"))
    assert rc == 2 and err.count("\n") == 1 and "did you mean 'chain'" in err, err
    assert not (tmp_path / "runs").exists()


def test_teacher_checkpoint_that_does_not_fit_the_data(interrupted, tmp_path):
    """A stopped run whose snapshot was then edited to 12 classes: BAN-1's saved head (10
    classes) cannot be loaded as BAN-2's teacher, and the engine says so instead of training."""
    root = resumable_copy(interrupted, tmp_path)
    snapshot = root / "experiment.toml"
    text = snapshot.read_text()
    assert "[experiment.dataset.options]\n" in text
    snapshot.write_text(text.replace("[experiment.dataset.options]\n", "[experiment.dataset.options]\nnum_classes = 12\n"))
    failed_run(root, start(tmp_path, "resume", root), 2, "gen-1.pt", "12 classes")
    assert torch.load(root / "checkpoints" / "last.pt", weights_only=True)["gen"] == 2   # left as it was


def test_torch_free_modules_do_not_import_torch():
    code = ("import sys, engine.events, engine.runs, engine.spec, engine.catalog, engine.spec.checks, engine.errors, "
            "engine.scheduler, engine.queue_order; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.strip() == "False"


def test_a_hold_file_pauses_the_run_after_the_named_epoch_until_it_goes(tmp_path):
    """HOLD "0 2" in the experiment's directory: the teacher trains epochs 1 and 2, writes that it
    is held and trains nothing more while the file exists; removed, the run goes on and ends ok."""
    config = digits_chain("chain", epochs=3, batch_size=256, generations=0, seeds=[0], device="cpu")
    root = tmp_path / "runs" / "chain" / "held"
    gate = hold(root.parent, "0 2")
    proc = run_chain(tmp_path, "held", config)
    try:
        events = wait_for(root, lambda ev: held(root), proc)
        # blocked by construction: the hold comes after epoch 2's event, before epoch 3 starts
        assert [e["epoch"] for e in epochs_of(events, 0)] == [1, 2]
        after = [e for e in events[events.index(epochs_of(events, 0)[-1]) + 1:] if e["kind"] != "heartbeat"]
        assert [e["kind"] for e in after] == ["log"]
        assert after[0]["message"].startswith("held after epoch 2 of generation 0 (Teacher)")
        assert torch.load(root / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
        gate.unlink()
        rc, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err
    events = read_events(root / "events.jsonl")
    assert [e["epoch"] for e in epochs_of(events, 0)] == [1, 2, 3] and events[-1]["status"] == "ok"
    logs = [e["message"] for e in events if e["kind"] == "log"]
    assert [m.split(":")[0] for m in logs if m.startswith(("held", "released"))] == [
        "held after epoch 2 of generation 0 (Teacher)", "released after epoch 2 of generation 0 (Teacher)"]
