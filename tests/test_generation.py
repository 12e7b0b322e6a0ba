"""engine/generation.py with a task written here: a new task is one Task and one Loop subclass,
and the skeleton gives it the epoch events, last.pt, SIGTERM stops and resumes that end with the
numbers of an uninterrupted run. Real cnn-small training on sklearn's digits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import checkpoint, optim, spec
from engine.context import Context, derive_seed
from engine.data import load
from engine.errors import Cancelled
from engine.events import EventWriter, read_events
from engine.generation import Resume, train_generation
from engine.runs import RunPaths
from engine.tasks import Loop, Task
from helpers import digits_chain

CONFIG = digits_chain("g", epochs=3, batch_size=64, optimizer={"lr": 0.1}, generations=0, device="cpu")


class Plain(Task):
    """Digits without augmentation or normalisation, in a permutation of their own per epoch."""
    metrics = ("train_loss", "test_loss", "test_err")
    sums = ("loss",)

    def model_args(self):
        return {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels}

    def place(self, ctx, gen, model):
        return model.to(ctx.device)

    def gen_start_extra(self):
        return {"task": "plain"}

    def start(self, ctx, gen, model, teacher, parts):
        self.loop = PlainLoop(ctx, gen, model, parts, self.data)   # the latest, for the test to look at
        return self.loop

    def plateau_metric(self, metrics):
        return metrics["train_loss"]

    def throughput(self, n, seconds):
        return {"samples": n}

    def ensemble_metrics(self, member_probs):
        return {}


class PlainLoop(Loop):
    """The carry is the number of samples seen in the epoch so far (saved mid-epoch, checked on resume)."""

    def __init__(self, ctx, gen, model, parts, data):
        self.gen, self.model, self.parts, self.seed = gen, model, parts, ctx.gen_seed(gen)
        self.x, self.y = data.train_x.float() / 255, data.train_y
        self.test_x, self.test_y = data.test_x.float() / 255, data.test_y
        self.batch = gen.training.batch_size
        self.steps = -(-len(self.y) // self.batch)
        self.restored = []

    def begin_epoch(self, epoch):
        self.order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))

    def train(self, epoch, skip, sums, carry, lr_at):
        seen = carry or 0
        self.model.train()
        for step in range(skip, self.steps):
            idx = self.order[step * self.batch:(step + 1) * self.batch]
            optim.set_lr(self.parts.optimizer, lr_at(step))
            loss = self.parts.objective(self.model(self.x[idx]), None, self.y[idx], **self.parts.options)
            optim.optimizer_step(self.parts.optimizer, self.parts.scaler, loss, self.model, None)
            sums["loss"] += loss.item() * len(idx)
            sums["n"] += len(idx)
            seen += len(idx)
            yield step + 1, [(step + 1, loss.item())], seen

    @torch.no_grad()
    def evaluate(self, sums, keep_probs):
        self.model.eval()
        logits = self.model(self.test_x)
        metrics = {"train_loss": sums["loss"] / sums["n"], "test_loss": F.cross_entropy(logits, self.test_y).item(),
                   "test_err": (logits.argmax(1) != self.test_y).float().mean().item()}
        return metrics, F.softmax(logits, 1).numpy().astype(np.float32) if keep_probs else None

    def test_probs(self):
        return self.evaluate({"loss": 0.0, "n": 1}, True)[1]

    def carry_state(self, carry):
        return {"seen": carry}

    def restore_carry(self, last):
        self.restored.append(last["seen"])
        return last["seen"]


@pytest.fixture(scope="module")
def task():
    return Plain(load(spec.Dataset("digits"), 0))


def context(root) -> Context:
    exp = spec.loads(CONFIG).experiments["g"]
    root.mkdir(parents=True, exist_ok=True)
    return Context(exp=exp, seed=0, paths=RunPaths(root), device=torch.device("cpu"),
                   events=EventWriter(RunPaths(root).events, root.name))


def test_a_new_task_trains_stops_and_resumes_through_the_skeleton(tmp_path, task):
    ctx = context(tmp_path / "whole")
    gen = ctx.exp.generations[0]
    whole = train_generation(ctx, gen, None, task)
    epochs = [e for e in read_events(ctx.paths.events) if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[-1]["samples"] == len(task.data.train_y)
    assert whole.final == {k: epochs[-1][k] for k in Plain.metrics} and whole.final["test_err"] < 0.5
    assert whole.test_probs.shape == (len(task.data.test_y), 10)

    ctx = context(tmp_path / "stopped")
    ctx.stop.set()
    with pytest.raises(Cancelled, match=r"generation 0 \(Teacher\): stopped at epoch 1 step 1"):
        train_generation(ctx, gen, None, task)
    last = checkpoint.load(ctx.paths.last_checkpoint)
    assert (last["epoch"], last["step"], last["seen"]) == (0, 1, 64)
    ctx.stop.clear()
    resumed = train_generation(ctx, gen, None, task, Resume(last, started=True))
    assert task.loop.restored == [64]
    assert resumed.final == whole.final and resumed.val_min == whole.val_min
    np.testing.assert_array_equal(resumed.test_probs, whole.test_probs)
    events = read_events(ctx.paths.events)
    assert [e["kind"] for e in events].count("gen_start") == 1 and events[0]["task"] == "plain"


def test_the_skeleton_tasks_and_helpers_import_no_cycle():
    """Every import (module level or inside a function) of the generation modules, followed
    through the engine: none leads back to where it started."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    names = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "engine").rglob("*.py")}
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in names and m != name}

    def reaches(start, goal, seen):
        return any(m == goal or (m not in seen and not seen.add(m) and reaches(m, goal, seen)) for m in graph[start])
    ours = ["engine.generation", "engine.tasks", "engine.tasks.image", "engine.tasks.lm", "engine.optim",
            "engine.context", "engine.errors", "engine.chain"]
    assert [m for m in ours if reaches(m, m, set())] == []
