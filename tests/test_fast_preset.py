"""The fast-training preset (issue 7): the airbench model, the `cifar10-fast` experiment in
experiments.toml, the JPEG decoding of bench/fast_chain.py, and its CPU smoke run of the whole
chain through `python -m engine run`."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import engine.models.airbench  # noqa: F401  (registers the family; engine.models imports it too)
from engine import models, spec
from engine.data import load
from engine.models.inherit import inherit

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = Path("/work/shared/data/cifar10")
sys.path.insert(0, str(REPO / "bench"))
from fast_chain import decode_jpeg  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def airbench_count(in_channels, num_classes, widths=(64, 256, 256)):
    """Parameters from the documented layout (engine/models/airbench.py), independently of the
    module: a 2x2 stem to 8 * in_channels channels with bias, blocks of two 3x3 convs and two
    BNs, a head without bias."""
    stem = 8 * in_channels
    total = in_channels * stem * 4 + stem
    for i, o in zip((stem,) + widths[:-1], widths):
        total += 9 * i * o + 9 * o * o + 2 * 2 * o
    return total + widths[-1] * num_classes


def test_airbench_layout_counts_and_widths():
    assert models.param_count("airbench", 10) == airbench_count(3, 10) == 1_972_792
    assert models.param_count("airbench", 100, in_channels=1) == airbench_count(1, 100)
    assert models.param_count("airbench", 10, width=0.5) == airbench_count(3, 10, (32, 128, 128))
    with pytest.raises(ValueError, match=r"'airbench'.*width > 0.*found 0"):
        models.build("airbench", 10, width=0)
    assert "airbench" in models.names()


@pytest.mark.parametrize("shape, sizes", [((3, 32, 32), [15, 7, 3]), ((1, 8, 8), [3, 1, 1]), ((3, 16, 16), [7, 3, 1])])
def test_airbench_any_input_size_pools_down_to_one_pixel(shape, sizes):
    torch.manual_seed(0)
    model = models.build("airbench", 10, in_channels=shape[0], width=0.25)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, out: seen.append(out.shape[-1]))
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10) and seen == sizes
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_airbench_convs_start_as_a_partial_identity():
    """Dirac init: each 3x3 conv's first in_channels filters copy their input (an implicit
    residual); the others are random."""
    torch.manual_seed(0)
    model = models.build("airbench", 10, width=0.25)
    conv = model.blocks[1].conv1
    x = torch.randn(2, conv.in_channels, 6, 6)
    y = conv(x)
    torch.testing.assert_close(y[:, :conv.in_channels], x)
    assert not torch.allclose(y[:, conv.in_channels:], torch.zeros_like(y[:, conv.in_channels:]))


def test_airbench_stem_and_head_are_inherited_and_frozen():
    torch.manual_seed(0)
    teacher, student = models.build("airbench", 10), models.build("airbench", 10)
    assert isinstance(student.stem, nn.Conv2d) and isinstance(student.head, nn.Linear)
    inherit(student, teacher, ["stem", "head"], ["stem"])
    assert torch.equal(student.stem.weight, teacher.stem.weight) and torch.equal(student.head.weight, teacher.head.weight)
    assert not student.stem.weight.requires_grad and student.head.weight.requires_grad


def test_airbench_learns_real_cifar10_through_the_engine(tmp_path):
    """A narrow airbench on 2,000 real CIFAR-10 images, 3 epochs through engine.train: far
    better than chance (90% error) on 500 test images it never saw (it reaches about 65%)."""
    from step_overhead import cifar10, run_engine
    data = cifar10(2000, 500)
    text = f"""
[[experiment]]
name = "t"
dataset = {{ name = "npz", root = "{CIFAR10}" }}
model = "airbench"
model_options = {{ width = 0.25 }}
epochs = 3
batch_size = 128
optimizer = {{ lr = 0.2, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }}
schedule = {{ name = "onecycle", warmup_epochs = 1 }}
generations = 0
"""
    exp = spec.loads(text).experiments["t"]
    _, epochs = run_engine(exp, data, 0, None, torch.device("cpu"))
    assert epochs[-1]["test_err"] < 0.75 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]


# ---- the preset -----------------------------------------------------------------------------

def preset() -> spec.Experiment:
    cfg = spec.load(REPO / "experiments.toml")
    assert "cifar10-fast" in cfg.experiments, "experiments.toml: expected the cifar10-fast preset (issue 7)"
    return cfg.experiments["cifar10-fast"]


def test_preset_is_an_airbench_chain_with_a_short_schedule():
    exp = preset()
    assert [g.objective for g in exp.generations] == ["ce", "ban", "ban", "ban"]
    assert [g.teacher for g in exp.generations] == [None, 0, 1, 2]
    assert exp.ensembles == [2, 3] and not exp.ensemble_include_teacher
    for g in exp.generations:
        t = g.training
        assert g.model == "airbench" and t.batch_size == 1024 and t.epochs <= 12
        assert t.schedule.name in ("onecycle", "cosine")


def test_preset_data_root_is_the_shipped_cifar10_from_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)   # `ban run` starts the engine in the repository
    exp = preset()
    assert Path(exp.dataset.root).resolve() == CIFAR10.resolve()
    data = load(exp.dataset, 0)
    assert data.train_x.shape == (10000, 3, 32, 32) and len(data.test_y) == 2000 and data.num_classes == 10


# ---- bench/fast_chain.py ----------------------------------------------------------------------

def test_decoded_jpegs_are_the_shipped_npz_images(tmp_path):
    """The first images of the 50k JPEG set decode to train.npz's and test.npz's (the data README:
    bit for bit with libjpeg-turbo, other builds may differ by 1 on a few pixels)."""
    out = decode_jpeg(tmp_path, 40, 20)
    for split, n in (("train", 40), ("test", 20)):
        with np.load(out / f"{split}.npz") as ours, np.load(CIFAR10 / f"{split}.npz") as shipped:
            assert ours["x"].shape == (n, 32, 32, 3) and ours["x"].dtype == np.uint8
            assert np.array_equal(ours["y"], shipped["y"][:n])
            assert np.abs(ours["x"].astype(int) - shipped["x"][:n]).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz", "train.npz"]   # no temp files left


def test_fast_chain_smoke_runs_the_whole_preset_chain(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fast_chain.py"), "--smoke", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^\s*(Teacher|BAN-\d|Ens\*\d)\s+(?!done:).*?(\d+\.\d+)%$", proc.stdout, re.M)   # the table
    assert [r[0] for r in rows] == ["Teacher", "BAN-1", "BAN-2", "BAN-3", "Ens*2", "Ens*3"], proc.stdout
    assert all(0 <= float(acc) <= 100 for _, acc in rows)
    run = next((tmp_path / "cifar10-fast").iterdir())
    snapshot = spec.load(run / "experiment.toml").experiments["cifar10-fast"]
    assert all(g.model == "airbench" and g.model_options == {"width": 0.0625} for g in snapshot.generations)
    assert sorted(p.name for p in (run / "checkpoints").glob("gen-*.pt")) == [f"gen-{k}.pt" for k in range(4)]
