"""The shipped `repro-*` experiments (issue 8) stay runnable: each one, cut to one seed and one
epoch, runs through `python -m engine run` on a small npz set in the real format."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import spec
from engine.runs import list_runs, load_state

ROOT = Path(__file__).resolve().parents[1]
REPRO = sorted(n for n in spec.load(ROOT / "experiments.toml").experiments if n.startswith("repro-"))


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar-like")
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("test", 60)):
        np.savez(root / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 y=np.arange(n) % 10)
    return root


def test_the_four_rows_are_shipped():
    assert REPRO == ["repro-ban", "repro-banl", "repro-cwtm", "repro-dkpp"]


@pytest.mark.parametrize("name", REPRO)
def test_repro_experiment_runs_cut_to_one_epoch(name, npz_root, tmp_path):
    exp = spec.load(ROOT / "experiments.toml").experiments[name]
    exp = dataclasses.replace(exp, seeds=[0], dataset=dataclasses.replace(exp.dataset, root=str(npz_root)))
    for g in exp.generations:
        g.training.epochs = 1
    config = tmp_path / "cut.toml"
    config.write_text(spec.dumps_experiment(exp))
    subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", name,
                    "--runs-dir", str(tmp_path / "runs")], check=True, timeout=300)
    state = load_state(list_runs(tmp_path / "runs")[0])
    assert state.status() == "ok"
    assert [g.objective for g in state.gens.values()] == [g.objective for g in exp.generations]
    assert sorted(state.ensembles) == exp.ensembles
