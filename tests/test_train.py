"""engine/generation.py with the image task, in-process: schedules, the optimizer's view of
frozen parts, the teacher cache, NaN detection and determinism, with real training of cnn-small on sklearn's digits."""
import contextlib
import re

import numpy as np
import pytest
import torch

from engine import optim, spec
from engine.data import load
from engine.events import EventWriter, read_events
from engine.models import build
from engine.runs import RunPaths
from engine.context import Context, derive_seed
from engine.errors import RunError
from engine.generation import train_generation
from engine.optim import LRSchedule
from engine.tasks.image import ImageClassifier, teacher_outputs
from helpers import digits_chain, generation_tables

# precision fp32: compared bit for bit, not bf16 on a bf16 CPU
CONFIG = digits_chain("t", epochs=1, batch_size=64, optimizer={"lr": 0.05}, generations=1, objective="ban",
                      device="cpu", precision="fp32")



@pytest.fixture(scope="module")
def digits():
    return load(spec.Dataset("digits"), 0)


def two_generations(student: dict) -> str:
    """CONFIG with a plain ce teacher and one student given as its generation table."""
    return CONFIG.replace("generations = 1\nobjective = \"ban\"\n", "") + generation_tables({"objective": "ce"}, student)


def context(tmp_path, data, text=CONFIG, seed=0) -> Context:
    exp = spec.loads(text).experiments["t"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Context(exp=exp, seed=seed, paths=RunPaths(tmp_path), device=torch.device("cpu"),
                   events=EventWriter(tmp_path / "events.jsonl", "r"))


def frozen_teacher(ctx, data) -> torch.nn.Module:
    teacher = train_generation(ctx, ctx.exp.generations[0], None, ImageClassifier(data)).model
    return teacher.eval().requires_grad_(False)


# ---- schedules ------------------------------------------------------------------------------

def lrs(schedule: spec.Schedule, epochs=10, steps=10, lr=1.0):
    s = LRSchedule(schedule, lr, epochs, steps)
    return [s(i) for i in range(epochs * steps)]


def test_constant_and_multistep():
    assert set(lrs(spec.Schedule("constant"))) == {1.0}
    m = lrs(spec.Schedule("multistep", milestones=[2, 5], gamma=0.1))
    assert m[19] == 1.0 and m[20] == pytest.approx(0.1) and m[49] == pytest.approx(0.1) and m[50] == pytest.approx(0.01)


def test_cosine_with_warmup():
    c = lrs(spec.Schedule("cosine", warmup_epochs=1))
    assert c[0] == pytest.approx(0.1) and c[9] == pytest.approx(1.0)        # linear warmup over 10 steps
    assert c[10] == pytest.approx(1.0) and c[55] == pytest.approx(0.5)       # then cosine from the top
    assert all(a >= b for a, b in zip(c[10:], c[11:])) and 0 < c[-1] < 1e-3
    plain = lrs(spec.Schedule("cosine"))
    assert plain[0] == 1.0 and plain[50] == pytest.approx(0.5)


def test_onecycle_rises_for_30_percent_then_anneals():
    o = lrs(spec.Schedule("onecycle"))
    assert o[0] == pytest.approx(1 / 25 + (1 - 1 / 25) / 30)
    assert max(o) == pytest.approx(1.0) and int(np.argmax(o)) in (29, 30)
    assert o[-1] < 1e-3


def test_plateau_decays_when_the_metric_improves_too_little():
    s = LRSchedule(spec.Schedule("plateau", gamma=0.5, threshold=0.01), 0.4, 10, 10)
    s.epoch_end(1.0)
    s.epoch_end(0.95)            # improved by 0.05 >= 0.01: keep
    assert s(0) == pytest.approx(0.4)
    s.epoch_end(0.945)           # improved by 0.005 < 0.01: halve
    assert s(0) == pytest.approx(0.2)
    restored = LRSchedule(spec.Schedule("plateau", gamma=0.5, threshold=0.01), 0.4, 10, 10)
    restored.load_state_dict(s.state_dict())
    restored.epoch_end(0.944)
    assert restored(0) == pytest.approx(0.1)


# ---- the loop -------------------------------------------------------------------------------

def test_a_generation_trains_and_reports(tmp_path, digits):
    ctx = context(tmp_path, digits, CONFIG.replace("epochs = 1", "epochs = 3"))
    result = train_generation(ctx, ctx.exp.generations[0], None, ImageClassifier(digits))
    epochs = [e for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["test_err"] < 0.3 and epochs[-1]["test_err"] < epochs[0]["test_err"]
    assert set(result.final) == {"train_loss", "train_err", "test_loss", "test_err", "train_eval_loss", "train_eval_err"}
    assert {k: result.final[k] for k in ("train_loss", "train_err", "test_loss", "test_err")} == \
        {k: epochs[-1][k] for k in ("train_loss", "train_err", "test_loss", "test_err")}
    assert 0 <= result.final["train_eval_err"] < 0.3 and result.final["train_eval_loss"] > 0
    assert result.val_min == {}   # no validation split: no minimum over epochs is kept (none of a test metric)
    assert result.test_probs.dtype == np.float32 and result.test_probs.shape == (len(digits.test_y), 10)
    assert np.mean(result.test_probs.argmax(1) != digits.test_y.numpy()) == result.final["test_err"]
    assert {"grad_correct", "grad_dark"} <= set(epochs[-1]["diagnostics"])
    assert epochs[-1]["samples_per_s"] > 0 and epochs[0]["lr"] > epochs[-1]["lr"]    # cosine
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["step"] == 0 and len(last["history"]) == 3


def test_gen_end_fit_is_an_eval_mode_evaluation_of_the_saved_model_on_the_training_set(tmp_path, digits):
    """gen_end's train_eval_err/loss equal, for every generation of a chain, an evaluation written
    here (one batch, by hand-normalised pixels) of the weights in checkpoints/gen-<k>.pt, in eval mode."""
    from typer.testing import CliRunner
    from ban_tui.cli import app
    from engine import chain, checkpoint
    root = tmp_path / "runs" / "t" / "r"
    ctx = context(root, digits, CONFIG.replace("epochs = 1", "epochs = 2"))
    chain.run_chain(ctx)
    ends = {e["gen"]: e for e in read_events(root / "events.jsonl") if e["kind"] == "gen_end"}
    assert sorted(ends) == [0, 1]
    mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
    std = torch.tensor(digits.std).view(1, -1, 1, 1)
    x, y = (digits.train_x.float() / 255 - mean) / std, digits.train_y.long()
    for k, e in ends.items():
        model = build("cnn-small", 10, 1)
        model.load_state_dict(checkpoint.load(root / "checkpoints" / f"gen-{k}.pt")["state_dict"])
        model.eval()
        with torch.no_grad():
            logits = model(x)
        err = (logits.argmax(1) != y).sum().item() / len(y)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        assert e["final"]["train_eval_err"] == pytest.approx(err, abs=0.5 / len(y)), k    # the same samples wrong
        assert e["final"]["train_eval_loss"] == pytest.approx(loss, rel=1e-5), k
    shown = CliRunner().invoke(app, ["show", str(root)])
    assert shown.exit_code == 0, shown.output
    fit = [f"{label} {100 * ends[k]['final']['train_eval_err']:.2f}%" for k, label in ((0, "Teacher"), (1, "BAN-1"))]
    assert f"training set in eval mode (fit): {fit[0]}  {fit[1]}" in shown.output


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, digits):
    def final(seed, sub):
        ctx = context(tmp_path / sub, digits, seed=seed)
        return train_generation(ctx, ctx.exp.generations[0], None, ImageClassifier(digits)).final
    a, b, c = final(0, "a"), final(0, "b"), final(1, "c")
    assert a == b and a != c


def test_frozen_inherited_parts_get_no_update_and_no_weight_decay(tmp_path, digits):
    ctx = context(tmp_path, digits, two_generations({"objective": "ban", "inherit": ["stem", "head"], "freeze": ["stem"],
                                                    "optimizer": {"lr": 0.05, "weight_decay": 0.1}}))
    teacher = frozen_teacher(ctx, digits)
    stem, head = teacher.stem.weight.clone(), teacher.head.weight.clone()
    student = train_generation(ctx, ctx.exp.generations[1], teacher, ImageClassifier(digits)).model
    assert torch.equal(student.stem.weight, stem)              # inherited and frozen: untouched
    assert not torch.equal(student.head.weight, head)          # inherited, trainable: trained
    assert not student.stem.weight.requires_grad
    opt = optim.make_optimizer(student, ctx.exp.generations[1].training.optimizer, ctx.device)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(student.stem.weight) not in in_opt and id(student.head.weight) in in_opt


def test_teacher_cache_gives_the_losses_of_recomputation(tmp_path, digits):
    def text(cache: bool) -> str:
        return two_generations({"objective": "ban+l", "epochs": 2, "teacher_cache": cache})
    ctx = context(tmp_path / "t", digits, text(False))
    teacher = frozen_teacher(ctx, digits)
    runs, calls = {}, {}
    for cache in ("false", "true"):
        ctx = context(tmp_path / cache, digits, text(cache == "true"))
        calls[cache] = 0
        hook = teacher.register_forward_hook(lambda *_, c=cache: calls.__setitem__(c, calls[c] + 1))
        train_generation(ctx, ctx.exp.generations[1], teacher, ImageClassifier(digits))
        hook.remove()
        runs[cache] = [e for e in read_events(tmp_path / cache / "events.jsonl") if e["kind"] == "epoch"]
    steps = -(-len(digits.train_x) // 64)
    assert calls == {"false": 2 * steps, "true": -(-len(digits.train_x) // 512)}   # the cache: one pass
    for plain, cached in zip(runs["false"], runs["true"]):
        for key in ("train_loss", "train_err", "test_loss", "test_err"):
            assert cached[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6), key
        assert cached["diagnostics"]["teacher_acc"] == plain["diagnostics"]["teacher_acc"]


def test_teacher_cache_is_not_used_with_augmentation(tmp_path):
    """On 32x32 images with augmentation every epoch crops anew: the loop recomputes, and says so."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    y = (np.arange(40) % 4)
    np.savez(tmp_path / "train.npz", x=x[:32], y=y[:32])
    np.savez(tmp_path / "test.npz", x=x[32:], y=y[32:])
    text = CONFIG.replace('{ name = "digits" }', f'{{ name = "npz", root = "{tmp_path}", augment = true }}')
    text = text.replace("batch_size = 64", "batch_size = 16\nteacher_cache = true")
    data = load(spec.loads(text).experiments["t"].dataset, 0)
    ctx = context(tmp_path, data, text)
    teacher = frozen_teacher(ctx, data)
    train_generation(ctx, ctx.exp.generations[1], teacher, ImageClassifier(data))
    logs = [e for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "log"]
    assert any(e["level"] == "warning" and "teacher_cache has no effect" in e["message"] for e in logs)


def test_teacher_outputs_are_the_teachers_logits_by_sample(digits):
    from engine.data import Batches
    teacher = build("cnn-small", 10, 1).eval()
    n = len(digits.train_x)
    batches = Batches(digits.train_x, torch.arange(n), 100, digits.mean, digits.std, shuffle=False,
                      augment=False, seed=0, device="cpu")
    cache = teacher_outputs(teacher, batches, n, contextlib.nullcontext)
    shuffled = Batches(digits.train_x, torch.arange(n), 64, digits.mean, digits.std, shuffle=True,
                       augment=False, seed=5, device="cpu")
    x, idx = next(iter(shuffled))
    with torch.no_grad():
        torch.testing.assert_close(cache[idx], teacher(x), rtol=1e-5, atol=1e-5)
    assert not cache.is_inference()


def test_nan_loss_names_generation_epoch_and_step(tmp_path, digits):
    ctx = context(tmp_path, digits, CONFIG.replace("lr = 0.05", "lr = 1e30"))
    with pytest.raises(RunError) as info:
        train_generation(ctx, ctx.exp.generations[0], None, ImageClassifier(digits))
    assert re.fullmatch(r"generation 0 \(Teacher\): loss became (nan|inf) at epoch 1 step \d+", str(info.value))
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_derive_seed_is_stable():
    assert derive_seed(0, "gen", 1) == derive_seed(0, "gen", 1) != derive_seed(0, "gen", 2)
    assert 0 <= derive_seed(2**40, "x") < 2**63
