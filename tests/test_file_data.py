"""The user's image files at any size (issue 24): an ImageFolder of test-made PNGs at 48x48
trains through the streamed path with 2 workers and resumes after SIGKILL to the same numbers;
the in-memory and the streamed path give the same epoch order, augmentation parameters and
(pad-crop) batches; torchvision's data set classes and Hugging Face save_to_disk directories
load; bad inputs exit 2 from `ban validate` at their line."""
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine import spec
from engine.data import batches_for, load
from engine.events import read_events
from helpers import BAN, cli_env, toml_value
from test_engine_process import epochs_of, numbers, wait_for

ENV = {**cli_env(), "PYTHONUNBUFFERED": "1"}


def image_folder(root, classes=3, per_class=(12, 4), seed=0):
    """train/ and val/ of class folders of PNGs of varying sizes around 48x48; class c is the
    brighter in channel c."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 100, (50 + i % 5, 48 + i % 3, 3)).astype(np.uint8)
                a[..., c % 3] += 120
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def dataset(**keys) -> spec.Dataset:
    table = {"name": "imagefolder", **keys}
    return spec.loads(f"[[experiment]]\nname = \"e\"\ndataset = {toml_value(table)}\n").experiments["e"].dataset


def config(root, **keys) -> str:
    table = {"name": "imagefolder", "root": str(root), "image_size": 48, **keys}
    return "\n".join(["[[experiment]]", 'name = "folder"', f"dataset = {toml_value(table)}", 'model = "cnn-small"',
                      "batch_size = 8", 'device = "cpu"', 'precision = "fp32"', "seeds = [2]",
                      "[[experiment.generation]]", "epochs = 1", "[[experiment.generation]]", "epochs = 3"]) + "\n"


def engine(cwd, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(cwd / "err.log", "ab"))


def test_an_image_folder_streams_with_2_workers_and_resumes_after_sigkill_to_the_same_numbers(tmp_path):
    image_folder(tmp_path / "photos")
    (tmp_path / "c.toml").write_text(config(tmp_path / "photos", stream=True, workers=2))
    run = lambda rid: engine(tmp_path, "run", "c.toml", "--experiment", "folder", "--runs-dir", "runs", "--run-id", rid)  # noqa: E731
    assert run("ref").wait(timeout=240) == 0, (tmp_path / "err.log").read_text()
    root = tmp_path / "runs" / "folder" / "killed"
    proc = run("killed")
    wait_for(root, lambda ev: len(epochs_of(ev, 1)) >= 1, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert engine(tmp_path, "resume", root).wait(timeout=240) == 0, (tmp_path / "err.log").read_text()
    want = read_events(tmp_path / "runs" / "folder" / "ref" / "events.jsonl")
    got = read_events(root / "events.jsonl")
    assert numbers(got) == numbers(want) and ("gen_end", 1) in numbers(got)
    assert [e["status"] for e in got if e["kind"] == "run_end"] == ["ok"]
    assert [e["samples"] for e in epochs_of(got, 1)] == [36, 36, 36]


def batches(data, shuffle=True, seed=5, epoch=1, **kw):
    b = batches_for(data.train_x, data.train_y, 8, data, shuffle=shuffle, augment=True, seed=seed, device="cpu", **kw)
    b.set_epoch(epoch)
    return b


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_in_memory_and_streamed_give_the_same_order_augmentation_and_batches(tmp_path, crop):
    root = image_folder(tmp_path / "photos")
    memory = load(dataset(root=str(root), image_size=40, stream=False, crop=crop), 0)
    streamed = load(dataset(root=str(root), image_size=40, stream=True, crop=crop, workers=0), 0)
    assert isinstance(memory.train_x, torch.Tensor) and not isinstance(streamed.train_x, torch.Tensor)
    assert memory.mean == streamed.mean and memory.std == streamed.std
    assert torch.equal(memory.train_y, streamed.train_y)
    m, s = batches(memory), batches(streamed)
    for a, b in zip(m.plan(), s.plan()):
        assert torch.equal(a, b)
    assert not torch.equal(m.plan()[0], batches(memory, epoch=2).plan()[0])   # a new epoch, a new order
    two_workers = list(batches(streamed, workers=2))
    for (xm, ym), (xs, ys), (x2, y2) in zip(m, s, two_workers):
        assert torch.equal(ym, ys) and torch.equal(ys, y2) and torch.equal(xs, x2)
        assert xm.shape == xs.shape == (len(ym), 3, 40, 40)
        if crop == "pad":   # the same pixels (resized from the file at a different size for "resized")
            assert torch.equal(xm, xs)
    test_m = [x for x, _ in batches_for(memory.test_x, memory.test_y, 5, memory, shuffle=False, augment=False, seed=0, device="cpu")]
    test_s = [x for x, _ in batches_for(streamed.test_x, streamed.test_y, 5, streamed, shuffle=False, augment=False, seed=0, device="cpu", workers=0)]
    assert all(torch.equal(a, b) for a, b in zip(test_m, test_s)) and len(test_m) == len(test_s) == 3


def test_the_default_rule_keeps_small_sets_in_memory_and_the_crop_follows_the_size(tmp_path):
    root = image_folder(tmp_path / "photos")
    small = load(dataset(root=str(root), image_size=32), 0)
    assert isinstance(small.train_x, torch.Tensor) and small.train_x.shape == (36, 3, 32, 32) and small.crop == "pad"
    assert load(dataset(root=str(root), image_size=64), 0).crop == "resized"
    assert small.num_classes == 3 and small.test_x.shape == (12, 3, 32, 32)


def idx_file(path, array, magic):
    path.write_bytes(struct.pack(">" + "i" * (array.ndim + 1), magic, *array.shape) + array.astype(np.uint8).tobytes())


def test_a_torchvision_data_set_class_and_a_saved_hf_data_set_load(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):   # torchvision's MNIST files, in the idx format
        idx_file(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), 2051)
        idx_file(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    mnist = load(dataset(name="torchvision:MNIST", root=str(tmp_path), image_size=28), 0)
    assert mnist.train_x.shape == (30, 1, 28, 28) and mnist.num_classes == 10 and mnist.crop == "pad"
    assert torch.equal(mnist.train_y, torch.arange(30) % 10)

    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3)).astype(np.uint8)) for _ in range(12)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    split = lambda k: datasets.Dataset.from_dict({"image": images[k:k + 6], "label": [i % 3 for i in range(6)]}, features=features)  # noqa: E731
    datasets.DatasetDict({"train": split(0), "test": split(6)}).save_to_disk(str(tmp_path / "hf"))
    hf = load(dataset(name="hf", path=str(tmp_path / "hf"), image_size=16, stream=True, workers=0), 0)
    assert hf.num_classes == 3 and len(hf.train_x) == 6
    x, y = next(iter(batches(hf)))
    assert x.shape == (6, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]


def test_bad_image_folders_and_sizes_exit_2_at_their_line(tmp_path):
    good = image_folder(tmp_path / "good", per_class=(2, 1))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    broken = image_folder(tmp_path / "broken", per_class=(2, 1))
    (broken / "train" / "class1" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    exps = {"no-classes": {"root": str(tmp_path / "empty"), "image_size": 32},
            "unreadable": {"root": str(broken), "image_size": 32},
            "zero-size": {"root": str(good), "image_size": 0},
            "no-size": {"root": str(good)}}
    text = "".join(f'[[experiment]]\nname = "{n}"\ndataset = {toml_value({"name": "imagefolder", **d})}\n\n' for n, d in exps.items())
    (tmp_path / "c.toml").write_text(text)
    r = subprocess.run([BAN, "validate", "c.toml"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0].startswith("c.toml:11:") and lines[0].endswith(" experiment[2].dataset.image_size: expected an integer >= 1, found 0")
    assert lines[1].startswith("c.toml:15:1: experiment[3].dataset: expected key 'image_size'")
    # the spec's problems come first; the files are read once the spec is clean
    (tmp_path / "c.toml").write_text(text.split("[[experiment]]\nname = \"zero-size\"")[0])
    r = subprocess.run([BAN, "validate", "c.toml"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0].startswith("c.toml:3:1: experiment[0].dataset: ") and "expected class folders of images" in lines[0]
    assert lines[1].startswith("c.toml:7:1: experiment[1].dataset: ") and "cut.png: expected an image" in lines[1]
    assert lines[2] == "ban: c.toml: 2 problems; nothing launched"


def test_under_ddp_each_rank_streams_its_part_of_every_global_batch_as_in_memory(tmp_path):
    root = image_folder(tmp_path / "photos")
    memory = load(dataset(root=str(root), image_size=32, stream=False), 0)
    streamed = load(dataset(root=str(root), image_size=32, stream=True, workers=0), 0)
    for rank in (0, 1):
        m = list(batches(memory, rank=rank, world_size=2, drop_last=True))
        s = list(batches(streamed, rank=rank, world_size=2, drop_last=True))
        assert len(m) == len(s) == 4 and all(len(y) == 4 for _, y in s)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(m, s))
    whole = [y for _, y in batches(streamed, drop_last=True)]
    parts = [[y for _, y in batches(streamed, rank=r, world_size=2, drop_last=True)] for r in (0, 1)]
    assert all(torch.equal(w, torch.cat([a, b])) for w, a, b in zip(whole, *parts))
