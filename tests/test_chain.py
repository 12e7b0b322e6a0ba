"""engine/chain.py in-process: the teacher is a separate module in eval mode, ensembles average
probabilities, finished generations are never trained again and missing events are repaired,
results.json folds the events. Real cnn-small training on sklearn's digits (1 epoch each)."""
import numpy as np
import pytest
import torch

from engine import chain, spec
from engine.data import load
from engine.events import EventWriter, read_events
from engine.runs import RunPaths
from engine.context import Context
from engine.generation import train_generation
from engine.tasks.image import ImageClassifier
from helpers import digits_chain

# precision fp32: compared bit for bit, not bf16 on a bf16 CPU
CONFIG = digits_chain("c", epochs=1, batch_size=64, optimizer={"lr": 0.05}, generations=2, objective="ban",
                      ensembles=[1, 2], ensemble_include_teacher=True, device="cpu", precision="fp32")



def context(root, text=CONFIG) -> Context:
    exp = spec.loads(text).experiments["c"]
    root.mkdir(parents=True, exist_ok=True)
    return Context(exp=exp, seed=0, paths=RunPaths(root), device=torch.device("cpu"),
                   events=EventWriter(RunPaths(root).events, root.name))


def test_teacher_is_a_new_module_in_eval_mode_that_never_trains(tmp_path):
    ctx = context(tmp_path)
    task = ImageClassifier(load(ctx.exp.dataset, 0))
    gen0, gen1 = ctx.exp.generations[:2]
    first = train_generation(ctx, gen0, None, task)
    chain.finish(ctx, gen0, first, task)
    teacher = chain.load_teacher(ctx, task, 0)
    assert teacher is not first.model and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    for a, b in zip(teacher.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)

    seen = []
    teacher.register_forward_hook(lambda m, *_: seen.append((m.training, torch.is_inference_mode_enabled())))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = train_generation(ctx, gen1, teacher, task).model
    assert student is not teacher and seen and set(seen) == {(False, True)}
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())   # BN stats too


def test_ensemble_averages_probabilities_not_logits(tmp_path):
    """Two members and three classes, label 1. The mean of the probabilities picks class 1; the
    mean of the log-probabilities (logits) would pick class 0, which neither member favours."""
    ctx = context(tmp_path)
    task = ImageClassifier(type("Data", (), {"test_y": torch.tensor([1]), "num_classes": 3})())
    a = np.array([[0.3, 0.699, 0.001]], dtype=np.float32)
    b = np.array([[0.3, 0.002, 0.698]], dtype=np.float32)
    assert np.log(a * b).argmax() == 0
    metrics = task.ensemble_metrics([a, b])
    assert metrics["test_err"] == 0.0
    assert metrics["test_loss"] == pytest.approx(-np.log((0.699 + 0.002) / 2), rel=1e-6)


def test_finished_generations_are_not_trained_again_and_missing_events_are_repaired(tmp_path):
    ctx = context(tmp_path)
    chain.run_chain(ctx)
    events = read_events(ctx.paths.events)
    kinds = [(e["kind"], e.get("gen", e.get("k"))) for e in events if e["kind"] != "log"]
    assert kinds == [("gen_start", 0), ("epoch", 0), ("gen_end", 0),
                     ("gen_start", 1), ("epoch", 1), ("gen_end", 1), ("ensemble", 1),
                     ("gen_start", 2), ("epoch", 2), ("gen_end", 2), ("ensemble", 2)]
    ens = {e["k"]: e for e in events if e["kind"] == "ensemble"}
    assert ens[1]["members"] == [0, 1] and ens[2]["members"] == [0, 1, 2]   # include the teacher

    # As if killed after gen-2.pt was saved but before its gen_end reached the events file:
    # the resumed chain announces BAN-2 and Ens*2 from the files, training nothing.
    cut = next(i for i, e in enumerate(events) if e["kind"] == "gen_end" and e["gen"] == 2)
    ctx.events.close()
    ctx.paths.events.write_text("".join(line + "\n" for line in ctx.paths.events.read_text().splitlines()[:cut]))
    again = context(tmp_path)
    chain.run_chain(again)
    new = read_events(ctx.paths.events)[cut:]
    assert [(e["kind"], e.get("gen", e.get("k"))) for e in new] == [("gen_end", 2), ("ensemble", 2)]
    assert new[0]["final"] == events[cut]["final"] and new[1]["test_err"] == ens[2]["test_err"]


def test_results_fold_the_events_of_a_resumed_run():
    env = {"v": 1, "ts": 1.0, "run": "r"}
    kinds = [("run_start", {"experiment": "x", "seed": 4, "device": "cpu"}),
             ("gen_start", {"gen": 0, "role": "teacher", "objective": "ce", "model": "cnn-small", "params": 5,
                            "teacher": None, "epochs": 1}),
             ("run_end", {"status": "cancelled", "error": None}),
             ("run_start", {"experiment": "x", "seed": 4, "device": "cpu"}),
             ("epoch", {"gen": 0, "epoch": 1, "epochs": 1, "test_err": 0.5}),
             ("gen_end", {"gen": 0, "final": {"test_err": 0.5}, "val_min": {},
                          "checkpoint": "checkpoints/gen-0.pt", "seconds": 1.0}),
             ("ensemble", {"k": 1, "members": [0], "test_err": 0.5, "test_loss": 1.0}),
             ("run_end", {"status": "ok", "error": None})]
    events = [{**env, "seq": i + 1, "kind": k, **p} for i, (k, p) in enumerate(kinds)]
    out = chain.results(events)
    assert out["status"] == "ok" and out["seed"] == 4 and out["experiment"] == "x"
    assert out["generations"] == [{"gen": 0, "label": "Teacher", "role": "teacher", "objective": "ce",
                                   "model": "cnn-small", "params": 5, "teacher": None, "epochs": 1, "done": True,
                                   "final": {"test_err": 0.5}, "val_min": {},
                                   "checkpoint": "checkpoints/gen-0.pt", "seconds": 1.0}]
    assert out["ensembles"] == [{"k": 1, "members": [0], "test_err": 0.5, "test_loss": 1.0}]
