"""The fast-training preset (issue 7): the airbench model, the `cifar10-fast` experiment in
experiments.toml, the JPEG decoding of bench/fast_chain.py, and its CPU smoke run of the whole
chain through `python -m engine run`."""
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine import models, spec
from engine.data import load
from engine.models.inherit import inherit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from fast_chain import decode_jpeg  # noqa: E402


def jpeg_set(path: Path, n_train: int, n_test: int) -> dict:
    """A JPEG set in the format of ../shared/data/cifar10/train50k_test2k_jpeg.npz (bytes, offsets,
    labels per split), made from random smooth images; returns the images it encoded."""
    from PIL import Image
    rng = np.random.default_rng(0)
    arrays, images = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = np.kron(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.ones((1, 4, 4, 1), np.uint8))
        blobs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
        arrays[f"{split}_y"] = np.arange(n) % 10
        images[split] = x
    np.savez(path, **arrays)
    return images


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


def test_airbench_learns_through_the_engine():
    """A narrow airbench on the bundled digits, 3 epochs through engine.generation: far better than
    chance (90% error) on test images it never saw."""
    from step_overhead import run_engine
    text = """
[[experiment]]
name = "t"
dataset = { name = "digits" }
model = "airbench"
model_options = { width = 0.25 }
epochs = 3
batch_size = 128
optimizer = { lr = 0.2, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }
schedule = { name = "onecycle", warmup_epochs = 1 }
generations = 0
"""
    exp = spec.loads(text).experiments["t"]
    _, epochs = run_engine(exp, load(exp.dataset, 0), 0, None, torch.device("cpu"))
    assert epochs[-1]["test_err"] < 0.5 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]


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


def test_preset_reads_torchvisions_cifar10():
    d = preset().dataset
    assert (d.name, d.root, d.download) == ("cifar10", "data", True)


# ---- bench/fast_chain.py ----------------------------------------------------------------------

def test_decoded_jpegs_are_the_encoded_images(tmp_path):
    images = jpeg_set(tmp_path / "set.npz", 40, 20)
    out = decode_jpeg(tmp_path / "out", 30, 20, source=tmp_path / "set.npz")
    for split, n in (("train", 30), ("test", 20)):
        with np.load(out / f"{split}.npz") as ours:
            assert ours["x"].shape == (n, 32, 32, 3) and ours["x"].dtype == np.uint8
            assert np.array_equal(ours["y"], np.arange(n) % 10)
            # lossy, but each decoded image is nearest to the image encoded at its own index
            dist = np.abs(ours["x"][:, None].astype(int) - images[split][None, :n].astype(int)).mean(axis=(2, 3, 4))
            assert np.array_equal(dist.argmin(axis=1), np.arange(n)) and dist.diagonal().max() < 25
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.npz", "train.npz"]   # no temp files


def test_fast_chain_smoke_runs_the_whole_preset_chain(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    jpeg_set(tmp_path / "set.npz", 512, 128)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fast_chain.py"), "--smoke", "--runs-dir", str(tmp_path),
                           "--jpeg", str(tmp_path / "set.npz")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^\s*(Teacher|BAN-\d|Ens\*\d)\s+(?!done:).*?(\d+\.\d+)%$", proc.stdout, re.M)   # the table
    assert [r[0] for r in rows] == ["Teacher", "BAN-1", "BAN-2", "BAN-3", "Ens*2", "Ens*3"], proc.stdout
    assert all(0 <= float(acc) <= 100 for _, acc in rows)
    run = next((tmp_path / "cifar10-fast").iterdir())
    snapshot = spec.load(run / "experiment.toml").experiments["cifar10-fast"]
    assert all(g.model == "airbench" and g.model_options == {"width": 0.0625} for g in snapshot.generations)
    assert sorted(p.name for p in (run / "checkpoints").glob("gen-*.pt")) == [f"gen-{k}.pt" for k in range(4)]
