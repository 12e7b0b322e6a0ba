"""(b) What the teacher costs: a BAN student's training step against a plain cross-entropy step,
both through the engine, timed side by side (interleaved, repeated) and reported as ratios.

    .venv/bin/python bench/teacher_cost.py [--model preact-resnet-8] [--batch-size 128]
                                           [--steps 10] [--repeats 3] [--threads 1] [--device cpu]

Contenders, each one `engine.generation.train_generation` epoch of `--steps` steps of the same model
on the same batches (helpers from bench/step_overhead.py):
  ce          generation 0: cross-entropy with the labels, no teacher;
  ban         generation 1: the BAN objective; per step the teacher (same model, eval mode) runs
              its forward under inference_mode in the same precision on the same augmented batch;
  ban cached  the same with teacher_cache = true: one teacher pass over the training set before the
              first epoch, then a lookup by sample index (needs augmentation off, so the augment-off
              rows compare it with ce and ban on unaugmented batches).
The floor: a student step is a forward and a backward (about 3 forwards of work), the teacher adds
one forward, so about 1.33x; `floor` measures 1 + (inference forward / bare training step) on
this machine with the same model and batch, and a bare hand-written BAN step against a bare CE
step (the teacher's activations and the student's compete for the caches: this is what the
engine's ban / ce ratio should be compared with). Ratios are of the training loop's own seconds (the
epoch event), medians over the repeats; `whole` also counts the generation's set-up, the cache
pass and the test pass. Last, the cache check: the cached run's losses against recomputing.
"""
import statistics
import time

import torch
import torch.nn.functional as F

from engine import models
from engine.data import Batches
from step_overhead import common_args, experiment, fast_path, interleaved, run_engine, sync


def teacher_for(exp, data, device):
    """An eval-mode, gradient-free teacher of the student's architecture, as the chain loads one
    (its weights do not change the cost)."""
    torch.manual_seed(1)
    teacher = models.build(exp.generations[0].model, data.num_classes, data.in_channels)
    return teacher.eval().requires_grad_(False).to(device, memory_format=fast_path(device, exp.generations[0].model)[1])


def floor_parts(exp, data, teacher, device, steps):
    """Seconds of `steps` bare training steps, of `steps` teacher inference forwards and of `steps`
    bare BAN steps (the teacher's forward, then the student's step on the teacher's softmax), on
    one batch of the epoch's real size."""
    autocast, memory_format, fused = fast_path(device, exp.generations[0].model)
    torch.manual_seed(0)
    model = models.build(exp.generations[0].model, data.num_classes, data.in_channels)
    model.to(device, memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=fused)
    t = exp.generations[0].training
    x, y = next(iter(Batches(data.train_x, data.train_y, t.batch_size, data.mean, data.std, shuffle=True,
                             augment=True, seed=0, device=device,
                             channels_last=memory_format == torch.channels_last)))
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    t1 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            with autocast():
                teacher(x)
    sync(device)
    t2 = time.perf_counter()
    for _ in range(steps):
        with torch.inference_mode(), autocast():
            target = teacher(x)
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), F.softmax(target.float(), dim=1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main():
    args, device, data = common_args(__doc__.splitlines()[0], repeats=3)
    aug = experiment(args.model, args.batch_size, objective="ban", augment=True)
    plain = experiment(args.model, args.batch_size, objective="ban", augment=False)
    cached = experiment(args.model, args.batch_size, objective="ban", augment=False, teacher_cache=True)
    teacher = teacher_for(aug, data, device)
    print(f"(b) teacher cost: {args.model}, batch {args.batch_size}, {args.steps} steps, {args.device}, "
          f"{args.threads} thread(s), data {data.name}, torch {torch.__version__}", flush=True)

    results = interleaved({
        ("augment on", "ce"): lambda: run_engine(aug, data, 0, None, device),
        ("augment on", "ban"): lambda: run_engine(aug, data, 1, teacher, device),
        ("augment off", "ce"): lambda: run_engine(plain, data, 0, None, device),
        ("augment off", "ban"): lambda: run_engine(plain, data, 1, teacher, device),
        ("augment off", "ban cached"): lambda: run_engine(cached, data, 1, teacher, device),
        ("floor", ""): lambda: floor_parts(aug, data, teacher, device, args.steps),
    }, args.repeats)

    def loop_s(key):
        return [ev[-1]["samples"] / ev[-1]["samples_per_s"] for _, ev in results[key]]

    def whole_s(key):
        return [s for s, _ in results[key]]

    print(f"{'':12} {'':11} {'loop s':>8} {'loop / ce':>10} {'whole / ce':>11}")
    for group in ("augment on", "augment off"):
        ce_loop, ce_whole = loop_s((group, "ce")), whole_s((group, "ce"))
        for key in [k for k in results if k[0] == group]:
            ratio = statistics.median(a / b for a, b in zip(loop_s(key), ce_loop))
            whole = statistics.median(a / b for a, b in zip(whole_s(key), ce_whole))
            print(f"{group:12} {key[1]:11} {statistics.median(loop_s(key)):>8.3f} {ratio:>9.3f}x {whole:>10.3f}x")
    floor = statistics.median(1 + fwd / step for step, fwd, _ in results[("floor", "")])
    bare = statistics.median(ban / step for step, _, ban in results[("floor", "")])
    print(f"floor on this machine: 1 + inference forward / training step = {floor:.3f}x (about 1.33x in theory); "
          f"a bare hand-written BAN step / CE step = {bare:.3f}x")

    recomputed, cache = results[("augment off", "ban")][0][1][-1], results[("augment off", "ban cached")][0][1][-1]
    print("cache check (augment off, same seed and batches): " + ", ".join(
        f"{k} {recomputed[k]:.6f} recomputed vs {cache[k]:.6f} cached" for k in ("train_loss", "test_loss")))


if __name__ == "__main__":
    main()
