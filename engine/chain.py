"""A Born-Again chain: the teacher (generation 0), its student generations and their ensembles.

Each generation's student is built fresh from its own seed; its teacher is the generation named
by `Generation.teacher` (default: the previous one), loaded from that generation's final
checkpoint into a new module object in eval mode, so the student never shares a module with it.
Generations may change model (cross-architecture), objective, training and inherited parts.

After each generation (rank 0 writes, temp file + rename, in this order): `probs/gen-<k>.npy`
(test-set probabilities, float32; a classifier's run also keeps the test labels once, in
`probs/labels.npy`, for `ban report`'s bootstrap), `checkpoints/gen-<k>.pt` (the generation is finished once this
exists), the `gen_end` event, an fsync of the events. Ens*k is the mean of the stored softmax
outputs of BAN-1..BAN-k (+ the teacher with ensemble_include_teacher): no model runs again.

Resume: finished generations are never trained again (their checkpoint exists); events a
killed run did not get to write (epoch, gen_end, ensemble) are written from the checkpoints, so
the events of a resumed run read as those of an uninterrupted one. The generation in progress
continues from `checkpoints/last.pt` (see engine/generation.py), passed to it as a `Resume`.

The task (engine/tasks/: language corpora of catalog.LM_DATASETS train as `lm`, everything
else as `image`) holds the run's data; every generation of every task trains through
`generation.train_generation`, and everything here is shared.
"""
from __future__ import annotations

import json

import numpy as np

from engine import catalog, checkpoint, ddp
from engine.context import Context
from engine.errors import Cancelled, ConfigError
from engine.events import read_events
from engine.generation import GenResult, Resume, build_model, train_generation, val_minima
from engine.runs import RunState, gen_label, load_state


def load_task(exp, seed: int):
    """The task that trains this experiment's generations (engine/tasks/), with its data loaded."""
    from engine.data import DataError
    try:
        if exp.dataset.name in catalog.LM_DATASETS:
            from engine.data import ptb
            from engine.tasks.lm import LanguageModel
            return LanguageModel(ptb.load(exp.dataset, seed))
        from engine.data import load
        from engine.tasks.image import ImageClassifier
        return ImageClassifier(load(exp.dataset, seed))
    except (DataError, OSError, ValueError) as exc:
        raise ConfigError(" ".join(str(exc).split())) from exc


def load_teacher(ctx: Context, task, index: int):
    """Generation `index`'s final weights in a new module, in eval mode, with no gradients."""
    gen = ctx.exp.generations[index]
    model = build_model(ctx, gen, task)
    path = ctx.paths.gen_checkpoint(index)
    state = checkpoint.load(path)["state_dict"]
    own = model.state_dict()
    for k in own.keys() | state.keys():
        if k not in own or k not in state or own[k].shape != state[k].shape:
            found = list(state[k].shape) if k in state else "nothing"
            wanted = list(own[k].shape) if k in own else "nothing"
            raise ConfigError(f"{path}: expected the weights of generation {index}'s model {gen.model!r} for "
                              f"{task.num_classes} classes, found {k} = {found} where the model has {wanted} "
                              "(was the data set or the model changed since it was trained?)")
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model.to(ctx.device)


def finish(ctx: Context, gen, result: GenResult, task) -> None:
    """Save generation gen's probabilities and weights, then announce it (rank 0)."""
    k, paths = gen.index, ctx.paths
    if ctx.main:
        if result.test_probs is not None:
            checkpoint.save_npy(result.test_probs, paths.gen_probs(k))
            test_y = getattr(getattr(task, "data", None), "test_y", None)   # classifiers (image tasks)
            if test_y is not None and not paths.test_labels.exists():
                checkpoint.save_npy(np.asarray(test_y, dtype=np.int64), paths.test_labels)
        checkpoint.save({"gen": k, "model": gen.model, "model_options": gen.model_options,
                         "num_classes": task.num_classes, "state_dict": result.model.state_dict(),
                         "final": result.final, "val_min": result.val_min, "seconds": result.seconds},
                        paths.gen_checkpoint(k))
        announce(ctx, k, result.final, result.val_min, result.seconds)
        paths.last_checkpoint.unlink(missing_ok=True)
    ddp.barrier()   # the other ranks may load this checkpoint as the next teacher


def announce(ctx: Context, k: int, final: dict, val_min: dict, seconds: float) -> None:
    ctx.emit("gen_end", gen=k, final=final, val_min=val_min, checkpoint=f"checkpoints/gen-{k}.pt", seconds=round(seconds, 3))
    if ctx.events is not None:
        ctx.events.sync()


def ensemble_members(exp, k: int) -> list[int]:
    return ([0] if exp.ensemble_include_teacher else []) + list(range(1, k + 1))


def emit_ensembles(ctx: Context, task, done: set, emitted: set) -> None:
    """The ensembles whose members are all finished and that have no event yet (rank 0)."""
    for k in ctx.exp.ensembles:
        members = ensemble_members(ctx.exp, k)
        if k in emitted or not set(members) <= done or not ctx.main:
            continue
        files = [ctx.paths.gen_probs(m) for m in members]
        if not all(f.exists() for f in files):
            ctx.log(f"Ens*{k}: no stored test probabilities for every member; skipped", "warning")
        else:
            metrics = task.ensemble_metrics([checkpoint.load_npy(f) for f in files])
            ctx.emit("ensemble", k=k, members=members, **metrics)
        emitted.add(k)


def run_chain(ctx: Context) -> None:
    """Train every unfinished generation of ctx.exp in order, with its ensembles."""
    exp, paths = ctx.exp, ctx.paths
    task = load_task(exp, ctx.seed)
    before = load_state(paths.root)   # what this run directory's events already say
    started = {g for g, s in before.gens.items() if s.role}   # gen_start already written
    emitted, done = set(before.ensembles), set()
    last = checkpoint.load(paths.last_checkpoint) if paths.last_checkpoint.exists() else None
    for gen in exp.generations:
        k = gen.index
        if paths.gen_checkpoint(k).exists():
            if k not in before.gens or not before.gens[k].done:
                saved = checkpoint.load(paths.gen_checkpoint(k))
                announce(ctx, k, saved["final"], val_minima(saved.get("val_min", saved.get("best", {}))), saved["seconds"])
        else:
            if ctx.should_stop():
                raise Cancelled(f"stopped before generation {k} ({gen_label(k)})")
            resume = Resume(last if last is not None and last["gen"] == k else None, started=k in started)
            if resume.last is not None:
                shown = before.gens[k].epoch if k in before.gens else 0
                for record in resume.last["history"]:
                    if record["epoch"] > shown:
                        ctx.emit("epoch", **record)
                ctx.log(f"{gen_label(k)} continues after epoch {resume.last['epoch']}, step {resume.last['step']}")
            teacher = load_teacher(ctx, task, gen.teacher) if gen.teacher is not None else None
            result = train_generation(ctx, gen, teacher, task, resume)
            teacher = None
            finish(ctx, gen, result, task)
        done.add(k)
        emit_ensembles(ctx, task, done, emitted)


def results(events: list[dict]) -> dict:
    """results.json: the run's outcome folded from its events (so the two always agree)."""
    state = RunState().extend(events)
    ends = {e["gen"]: e for e in events if e.get("kind") == "gen_end"}
    envelope = ("v", "seq", "ts", "run", "kind")
    gens = [{"gen": g.gen, "label": g.label, "role": g.role, "objective": g.objective, "model": g.model,
             "params": g.params, "teacher": g.teacher, "epochs": g.epochs, "done": g.done,
             "final": ends.get(g.gen, {}).get("final"), "val_min": ends.get(g.gen, {}).get("val_min"),
             "checkpoint": ends.get(g.gen, {}).get("checkpoint"), "seconds": ends.get(g.gen, {}).get("seconds")}
            for g in sorted(state.gens.values(), key=lambda g: g.gen)]
    ensembles = [{k: v for k, v in e.items() if k not in envelope} for _, e in sorted(state.ensembles.items())]
    end = state.end or {}
    return {"run": state.run_id, "experiment": state.experiment, "seed": state.seed, "device": state.device,
            "status": end.get("status"), "error": end.get("error"), "generations": gens, "ensembles": ensembles}


def write_results(paths) -> dict:
    out = results(read_events(paths.events))
    checkpoint.write_text(paths.results, json.dumps(out, indent=1) + "\n")
    return out
