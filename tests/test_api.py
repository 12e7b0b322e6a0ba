"""engine.api (issue 24): the report DataFrame equals `ban report --format json` on the same runs,
runs() has a row per run x generation / ensemble with the report's grouping key, history() the
epoch events, load_model() reproduces the run's stored test probabilities, and everything but
load_model leaves torch unimported."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import api, spec
from engine.data import Batches, load
from engine.events import read_events
from engine.runs import RunPaths
from helpers import BAN, SGD, cli_env, digits_chain

CONFIG = digits_chain("api", dataset={"options": {"train_images": 150}}, epochs=2, generations=2, ensembles=[2], seeds=[0, 1],
                      batch_size=32, optimizer=SGD, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("api")
    (cwd / "c.toml").write_text(CONFIG)
    for seed in (0, 1):
        subprocess.run([sys.executable, "-m", "engine", "run", "c.toml", "--experiment", "api", "--seed", str(seed),
                        "--runs-dir", "runs", "--run-id", f"s{seed}"], cwd=cwd, env=cli_env(), check=True, timeout=240)
    return cwd / "runs"


def test_the_report_frame_equals_ban_report_json(runs_dir):
    out = subprocess.run([BAN, "report", "--format", "json", "--runs-dir", str(runs_dir)], capture_output=True,
                         text=True, env=cli_env(), check=True, timeout=120)
    want = json.loads(out.stdout)
    df = api.report(runs_dir)
    assert len(df) == sum(len(e["columns"]) for e in want["experiments"]) == 4   # Teacher, BAN-1, BAN-2, Ens*2
    for e in want["experiments"]:
        for label, col in e["columns"].items():
            row = df[(df.experiment == e["name"]) & (df.config == e["config"]) & (df.column == label)]
            assert len(row) == 1
            row = row.iloc[0]
            assert (row["mean"], row["std"], row["n"], row["seeds"], row["values"]) == \
                (col["mean"], col["std"], col["n"], col["seeds"], col["values"])
            d = col["vs_teacher"]
            if d is None:
                assert row["vs_teacher_mean"] is None or np.isnan(row["vs_teacher_mean"])
            else:
                assert (row["vs_teacher_mean"], row["vs_teacher_std"], row["vs_teacher_n"],
                        [row["vs_teacher_ci_low"], row["vs_teacher_ci_high"]]) == (d["mean"], d["std"], d["n"], d["ci"])
    assert df.attrs["dropped"] == want["dropped"] and df.attrs["warnings"] == want["warnings"]


def test_runs_and_history_frames(runs_dir):
    df = api.runs(runs_dir)
    assert len(df) == 2 * (3 + 1)
    assert set(df.status) == {"ok"} and sorted(set(df.seed)) == [0, 1]
    assert set(df.config) == set(api.report(runs_dir).config)   # the report's grouping key
    assert list(df[df.seed == 0].label) == ["Teacher", "BAN-1", "BAN-2", "Ens*2"]
    assert set(df["config.dataset.name"]) == {"digits"} and set(df["gen.objective"].dropna()) == {"ce", "ban"}
    root = runs_dir / "api" / "s1"
    ends = {e["gen"]: e["final"] for e in read_events(root / "events.jsonl") if e["kind"] == "gen_end"}
    gens = df[(df.seed == 1) & (df.kind == "generation")]
    assert list(gens.test_err) == [ends[g]["test_err"] for g in (0, 1, 2)]
    h = api.history(root)
    assert list(zip(h.gen, h.epoch)) == [(g, e) for g in (0, 1, 2) for e in (1, 2)]
    assert "diagnostics.grad_dark" in h.columns and "seq" not in h.columns
    assert len(api.runs(str(runs_dir / "api" / "s*"))) == 8 and api.runs(runs_dir, experiment="other").empty


def test_load_model_reproduces_the_stored_test_probabilities(runs_dir):
    root = runs_dir / "api" / "s0"
    model = api.load_model(root, 2)
    assert not model.training
    exp = next(iter(spec.load(RunPaths(root).snapshot).experiments.values()))
    data = load(exp.dataset, 0)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), 1) for x, _ in Batches(
            data.test_x, data.test_y, 128, data.mean, data.std, shuffle=False, augment=False, seed=0, device="cpu")])
    np.testing.assert_allclose(probs.numpy(), np.load(RunPaths(root).gen_probs(2)), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="gen-7.pt"):
        api.load_model(root, 7)


def test_the_api_but_load_model_imports_no_torch(runs_dir):
    code = ("import sys; from engine import api; r = sys.argv[1]; "
            "api.runs(r); api.report(r); api.history(r + '/api/s0'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(runs_dir)], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
