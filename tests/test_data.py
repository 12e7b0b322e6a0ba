"""engine.data: the image data sets and the batch path (real files in tmp_path, no network)."""
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from engine.data import Batches, DataError, augment, augment_reference, crop_flip, load
from engine.data.batches import augment_params
from engine.data.images import stratified_split
from engine.spec import Dataset


@pytest.fixture(scope="module")
def digits():
    return load(Dataset(name="digits"), seed=0)


# ---- digits ---------------------------------------------------------------------------------

def test_digits_shapes_and_fixed_stratified_split(digits):
    d = digits
    assert (d.kind, d.name, d.num_classes, d.in_channels) == ("image", "digits", 10, 1)
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 8, 8)
    assert d.train_y.dtype == torch.int64 and d.val_x is None and d.val_y is None
    assert len(d.train_x) + len(d.test_x) == 1797 and len(d.test_x) == 359
    assert int(d.train_x.max()) == 255 and int(d.train_x.min()) == 0
    # stratified: each class holds round(20%) of its samples out for the test set
    counts = torch.bincount(torch.from_numpy(load_digits().target), minlength=10)
    assert torch.equal(torch.bincount(d.test_y, minlength=10), torch.round(counts * 0.2).long())
    # the same images as scikit-learn's, rescaled 0..16 -> 0..255, none lost or repeated
    raw = np.round(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    ours = torch.cat([d.train_x, d.test_x]).reshape(1797, -1).numpy()
    assert sorted(map(bytes, raw)) == sorted(map(bytes, ours))
    # the test set does not depend on the experiment seed
    other = load(Dataset(name="digits"), seed=7)
    assert torch.equal(other.test_x, d.test_x) and torch.equal(other.train_y, d.train_y)


def test_mean_std_come_from_the_training_split(digits):
    x = digits.train_x.double() / 255
    assert digits.mean == pytest.approx([x.mean().item()], abs=1e-9)
    assert digits.std == pytest.approx([x.std(unbiased=False).item()], abs=1e-9)


def test_val_split_is_stratified_disjoint_and_fixed_by_seed(digits):
    y = digits.train_y
    kept, held = stratified_split(y, 0.25, seed=3)
    assert len(set(kept.tolist()) & set(held.tolist())) == 0
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(y)))
    counts = torch.bincount(y, minlength=10)
    assert torch.equal(torch.bincount(y[held], minlength=10), torch.round(counts * 0.25).long())
    assert torch.equal(stratified_split(y, 0.25, seed=3)[1], held)
    assert not torch.equal(stratified_split(y, 0.25, seed=4)[1], held)
    # through load: val is carved out of the training split, the test split is untouched
    d = load(Dataset(name="digits", val_split=0.25), seed=3)
    assert len(d.train_x) + len(d.val_x) == len(digits.train_x)
    assert torch.equal(d.test_x, digits.test_x)
    assert torch.equal(d.val_y, y[held]) and torch.equal(d.val_x, digits.train_x[held])
    x = d.train_x.double() / 255
    assert d.mean == pytest.approx([x.mean().item()], abs=1e-9)


def test_a_class_with_one_sample_stays_in_training():
    y = torch.tensor([0, 0, 0, 0, 1])
    kept, held = stratified_split(y, 0.6, seed=0)   # round(0.6 * 1) would take class 1's only sample
    assert 4 in kept.tolist() and len(held) == 2


# ---- CIFAR in torchvision's format ----------------------------------------------------------

def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar(root, name, n_train, n_test, rng):
    """torchvision's on-disk format: pickled dicts with 'data' [N, 3072] uint8 (CHW rows)."""
    if name == "cifar10":
        base, label_key, n_classes = root / "cifar-10-batches-py", "labels", 10
        base.mkdir(parents=True)
        parts = [(f"data_batch_{i}", n_train // 5) for i in range(1, 6)] + [("test_batch", n_test)]
        write_pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                             "num_cases_per_batch": n_train // 5, "num_vis": 3072})
    else:
        base, label_key, n_classes = root / "cifar-100-python", "fine_labels", 100
        base.mkdir(parents=True)
        parts = [("train", n_train), ("test", n_test)]
        write_pickle(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                     "coarse_label_names": [f"k{i}" for i in range(20)]})
    written = {}
    for fname, n in parts:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, n_classes, n)]
        entry = {"batch_label": fname, "data": data, label_key: labels,
                 "filenames": [f"img{i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [v // 5 for v in labels]
        write_pickle(base / fname, entry)
        written[fname] = (data, labels)
    return written


@pytest.mark.parametrize("name,train_files,test_file,classes", [
    ("cifar10", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", 10),
    ("cifar100", ["train"], "test", 100),
])
def test_cifar_from_torchvision_files(tmp_path, name, train_files, test_file, classes):
    rng = np.random.default_rng(0)
    written = make_cifar(tmp_path, name, n_train=50, n_test=20, rng=rng)
    d = load(Dataset(name=name, root=str(tmp_path)), seed=0)
    assert (d.num_classes, d.in_channels, d.name) == (classes, 3, name)
    train_data = np.concatenate([written[f][0] for f in train_files])
    train_labels = sum((written[f][1] for f in train_files), [])
    assert d.train_x.shape == (50, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    assert np.array_equal(d.train_x.numpy().reshape(50, -1), train_data)   # CHW order kept, files in order
    assert d.train_y.tolist() == train_labels
    assert np.array_equal(d.test_x.numpy().reshape(20, -1), written[test_file][0])
    assert d.test_y.tolist() == written[test_file][1]
    x = d.train_x.double() / 255
    assert d.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert d.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)


def test_cifar_missing_files_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as e:
        load(Dataset(name="cifar10", root=str(tmp_path / "nowhere")), seed=0)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "download = true" in msg
    # one file missing is named too
    make_cifar(tmp_path, "cifar100", 10, 5, np.random.default_rng(1))
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python.*test"):
        load(Dataset(name="cifar100", root=str(tmp_path)), seed=0)


def test_cifar_label_beyond_class_count_is_an_error(tmp_path):
    make_cifar(tmp_path, "cifar10", 10, 5, np.random.default_rng(2))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes())
    entry["labels"][0] = 12
    write_pickle(path, entry)
    with pytest.raises(DataError, match=r"expected labels 0\.\.9.*found label 12"):
        load(Dataset(name="cifar10", root=str(tmp_path)), seed=0)


# ---- npz ------------------------------------------------------------------------------------

def test_npz_round_trip_color_grey_and_options(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 12, 10, 3), dtype=np.uint8)
    y = np.arange(30) % 4
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:6], y=np.array([0, 1, 2, 6, 1, 0]))
    d = load(Dataset(name="npz", root=str(tmp_path)), seed=0)
    assert (d.num_classes, d.in_channels) == (7, 3)     # max label + 1 over train and test
    assert torch.equal(d.train_x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert d.train_y.tolist() == y.tolist() and d.train_y.dtype == torch.int64
    assert load(Dataset(name="npz", root=str(tmp_path), options={"num_classes": 9}), 0).num_classes == 9

    grey = rng.integers(0, 256, (8, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=grey, y=np.zeros(8, np.int32))
    np.savez(tmp_path / "b.npz", x=grey[:2], y=np.ones(2, np.int16))
    d = load(Dataset(name="npz", root=str(tmp_path), options={"train": "a.npz", "test": "b.npz"}), 0)
    assert d.train_x.shape == (8, 1, 5, 5) and torch.equal(d.train_x[:, 0], torch.from_numpy(grey))
    assert (d.num_classes, d.in_channels) == (2, 1)


@pytest.mark.parametrize("train,test,options,pattern", [
    (None, None, {}, r"train\.npz: expected an \.npz file.*found no such file"),
    ({"x": np.zeros((4, 8, 8, 3), np.uint8)}, None, {}, r"train\.npz: expected an array 'y', found only \['x'\]"),
    ({"x": np.zeros((4, 8, 8, 3), np.float32), "y": np.zeros(4, int)}, None, {},
     r"train\.npz: x: expected uint8 .*found float32 of shape \[4, 8, 8, 3\]"),
    ({"x": np.zeros((4, 8), np.uint8), "y": np.zeros(4, int)}, None, {}, r"x: expected uint8 images.*\[4, 8\]"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, int)}, None, {}, r"y: expected 4 integer labels.*\[3\]"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4)}, None, {}, r"y: expected 4 integer labels.*float64"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": -np.ones(4, int)}, None, {}, r"labels >= 0"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4, int)},
     {"x": np.zeros((4, 9, 8), np.uint8), "y": np.zeros(4, int)}, {}, r"same C x H x W.*\[1, 8, 8\] and \[1, 9, 8\]"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.arange(4)}, None, {"num_classes": 2},
     r"dataset.options.num_classes: expected labels 0\.\.1.*found label 3"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.arange(4)}, None, {"trian": "x.npz"},
     r"unknown key 'trian'.*train, test, num_classes"),
])
def test_npz_errors_say_what_was_expected_and_found(tmp_path, train, test, options, pattern):
    if train is not None:
        np.savez(tmp_path / "train.npz", **train)
        np.savez(tmp_path / "test.npz", **(test or train))
    with pytest.raises(DataError, match=pattern) as e:
        load(Dataset(name="npz", root=str(tmp_path), options=options), seed=0)
    assert "\n" not in str(e.value)


def test_npz_not_a_zip_file(tmp_path):
    (tmp_path / "train.npz").write_text("hello")
    with pytest.raises(DataError, match=r"train\.npz: expected an \.npz file, could not read it"):
        load(Dataset(name="npz", root=str(tmp_path)), seed=0)


def test_language_corpus_is_refused_clearly():
    with pytest.raises(DataError, match="language corpus"):
        load(Dataset(name="ptb", root="/nowhere"), seed=0)


# ---- augmentation ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (16, 2, 20, 28)])
def test_vectorised_augment_equals_the_reference_loop(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    offsets, flips = augment_params(len(x), g)
    offsets[:4] = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0]])    # the extreme corners
    out = crop_flip(x, offsets, flips)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, augment_reference(x, offsets, flips))
    # augment() is params + crop_flip with the generator's next draws
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment(x, g1), crop_flip(x, *augment_params(len(x), g2)))


def test_augment_offsets_and_flips_are_uniform():
    # channel 0 holds each pixel's row, channel 1 its column: the output reveals the crop
    n = 8100
    rows = torch.arange(32).view(32, 1).expand(32, 32)
    x = torch.stack([rows, rows.t()]).to(torch.uint8).expand(n, 2, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0)).long()
    dy = out[:, 0, 4, 4]                                  # output row 4 = source row dy (no reflection)
    flipped = out[:, 1, 4, 5] < out[:, 1, 4, 4]
    dx = torch.where(flipped, out[:, 1, 4, 4] - 23, out[:, 1, 4, 4])
    counts = torch.bincount(dy * 9 + dx, minlength=81)
    assert len(counts) == 81 and (counts > 0).all()
    assert counts.min() > 50 and counts.max() < 150          # expected 100 each
    assert 0.47 < flipped.float().mean() < 0.53


# ---- Batches --------------------------------------------------------------------------------

def cifar_like(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def epoch(batches, e):
    batches.set_epoch(e)
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def test_batches_are_a_function_of_seed_and_epoch():
    x, y = cifar_like()
    make = lambda bs=16, seed=1: Batches(x, y, bs, MEAN, STD, shuffle=True, augment=True,  # noqa: E731
                                         seed=seed, device="cpu")
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    a = make()
    e0, e1 = epoch(a, 0), epoch(a, 1)
    assert torch.equal(torch.get_rng_state(), rng_before)       # only the private CPU generator draws
    fresh = make()                                               # e.g. after a resume
    assert all(torch.equal(p, q) for p, q in zip(epoch(fresh, 1), e1))
    assert all(torch.equal(p, q) for p, q in zip(epoch(a, 0), e0))
    assert not torch.equal(e0[1], e1[1]) and not torch.equal(e0[0], e1[0])
    assert not torch.equal(epoch(make(seed=2), 0)[0], e0[0])
    # per (sample, epoch): the same sample gets the same crop whatever the batch size
    big = epoch(make(bs=50), 0)
    assert torch.equal(big[0], e0[0]) and torch.equal(big[1], e0[1])


def test_each_sample_once_per_epoch_and_augmentation_per_sample():
    x, y = cifar_like()
    y = torch.arange(50)     # labels = sample ids
    b = Batches(x, y, 16, MEAN, STD, shuffle=True, augment=True, seed=0, device="cpu")
    xs, ids = epoch(b, 3)
    assert sorted(ids.tolist()) == list(range(50)) and ids.tolist() != list(range(50))
    plain = Batches(x, y, 16, MEAN, STD, shuffle=False, augment=True, seed=0, device="cpu")
    xs_plain, ids_plain = epoch(plain, 3)
    assert ids_plain.tolist() == list(range(50))
    assert torch.equal(xs_plain[ids], xs)   # shuffling does not change a sample's augmentation


def test_batches_normalise_and_respect_len_drop_last_and_formats():
    x, y = cifar_like(n=37)
    b = Batches(x, y, 10, MEAN, STD, shuffle=False, augment=False, seed=0, device="cpu")
    assert len(b) == 4 and [len(xb) for xb, _ in b] == [10, 10, 10, 7]
    xs, ys = epoch(b, 0)
    want = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert torch.allclose(xs, want, atol=1e-5) and torch.equal(ys, y)
    d = Batches(x, y, 10, MEAN, STD, shuffle=True, augment=True, seed=0, device="cpu", drop_last=True,
                channels_last=True, dtype=torch.bfloat16)
    batches = list(d)
    assert len(d) == 3 and len(batches) == 3 and all(len(xb) == 10 for xb, _ in batches)
    xb = batches[0][0]
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous(memory_format=torch.channels_last)
    ref = Batches(x, y, 10, MEAN, STD, shuffle=True, augment=True, seed=0, device="cpu", drop_last=True)
    assert torch.allclose(xb.float(), next(iter(ref))[0], atol=0.05)


def test_augmentation_only_for_32x32_images(digits):
    b = Batches(digits.train_x, digits.train_y, 64, digits.mean, digits.std, shuffle=False,
                augment=True, seed=0, device="cpu")
    assert not b.augment
    x, _ = next(iter(b))
    want = (digits.train_x[:64].float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, want, atol=1e-5)
    x32, y32 = cifar_like()
    on = Batches(x32, y32, 50, MEAN, STD, shuffle=False, augment=True, seed=0, device="cpu")
    off = Batches(x32, y32, 50, MEAN, STD, shuffle=False, augment=False, seed=0, device="cpu")
    assert on.augment and not torch.equal(next(iter(on))[0], next(iter(off))[0])


def test_ranks_split_every_global_batch():
    x, y = cifar_like(n=48)
    kw = dict(shuffle=True, augment=True, seed=4, device="cpu", drop_last=True)
    whole = list(Batches(x, y, 16, MEAN, STD, **kw))
    parts = [list(Batches(x, y, 16, MEAN, STD, rank=r, world_size=2, **kw)) for r in range(2)]
    for i, (xb, yb) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), xb)
        assert torch.equal(torch.cat([parts[0][i][1], parts[1][i][1]]), yb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_batches_equal_cpu_batches():
    x, y = cifar_like()
    kw = dict(shuffle=True, augment=True, seed=3)
    cpu = epoch(Batches(x, y, 16, MEAN, STD, device="cpu", **kw), 2)
    gpu = epoch(Batches(x, y, 16, MEAN, STD, device="cuda", **kw), 2)
    assert gpu[0].is_cuda and torch.equal(gpu[1].cpu(), cpu[1])
    assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-5)


def test_digits_train_images_is_a_fixed_stratified_cut_of_the_training_split(digits):
    cut = load(Dataset(name="digits", options={"train_images": 150}), seed=0)
    assert abs(len(cut.train_y) - 150) <= 5 and torch.bincount(cut.train_y).min() >= 14
    rows = {tuple(x.flatten().tolist()) for x in digits.train_x}
    assert all(tuple(x.flatten().tolist()) in rows for x in cut.train_x)      # a subset of the training split
    assert torch.equal(cut.test_x, digits.test_x)                             # the same test set
    again = load(Dataset(name="digits", options={"train_images": 150}), seed=7)
    assert torch.equal(again.train_x, cut.train_x)                            # the same for every seed
    for bad in (5, 5000, 1.5, True):
        with pytest.raises(DataError, match="train_images: expected an integer in 10..1438"):
            load(Dataset(name="digits", options={"train_images": bad}), seed=0)
