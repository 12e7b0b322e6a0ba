"""(a) The engine's training step against a bare hand-written PyTorch loop on the same model,
batch, data and device, timed side by side (interleaved, repeated) and reported as ratios
(goal: <= 1.05x).

    .venv/bin/python bench/step_overhead.py [--model preact-resnet-8] [--batch-size 128]
                                            [--steps 10] [--repeats 5] [--threads 1] [--device cpu]

engine: `engine.generation.train_generation` of a teacher generation (objective ce) for one epoch of
`--steps` steps, timed whole: model build, batches, the loop (per step: the learning rate, the
label lookup, forward, objective, backward, SGD, the loss/error read-back, the gradient
diagnostics, the finite check), the test pass, last.pt and the events.
bare: the same model built from the same seed, torch.optim.SGD with the same settings and
`for x, y in batches: loss = cross_entropy(model(x), y); backward; step` over the same batches
(engine.data.Batches: the data path is measured on its own by bench/data_path.py), with the
precision, layout, fused SGD and kernel settings (engine.hardware.configure_kernels) that the engine
picks on this device, then the same test pass
(loss, errors, probabilities). Nothing is subtracted.

Ratios, medians over the repeats (one warm-up round first): `whole` = engine call / bare call;
`loop` = the engine's own training seconds (its epoch event) / the bare loop's. Then the engine's
per-step extras, each timed alone on tensors of the step's shapes, as a share of a bare step.
Data: the first images of ../shared/data/cifar10/train.npz (real CIFAR-10; or of
$BAN_CIFAR10/train.npz) when present, else random images of that shape. bench/teacher_cost.py and bench/gpu_throughput.py reuse the
helpers here.
"""
import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import hardware, models, spec
from engine.data import Batches, load
from engine.data.images import ImageData, channel_stats
from engine.events import EventWriter, read_events
from engine.runs import RunPaths
from engine.context import Context
from engine.generation import train_generation
from engine.optim import LRSchedule, autocast_dtype
from engine.tasks.image import ImageClassifier

# train.npz / test.npz of CIFAR-10 (x uint8 NHWC, y); $BAN_CIFAR10 names another folder (a device machine)
CIFAR10 = Path(os.environ.get("BAN_CIFAR10", Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))

CONFIG = """
[[experiment]]
name = "bench"
dataset = {{ name = "npz", root = "{root}", augment = {augment} }}
model = "{model}"
epochs = {epochs}
batch_size = {batch_size}
eval_batch_size = 512
optimizer = {{ lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }}
schedule = "cosine"
{training}
[[experiment.generation]]
objective = "ce"
[[experiment.generation]]
objective = "{objective}"
"""


def cifar10(n_train: int, n_test: int, root: Path = CIFAR10) -> ImageData:
    """The first n_train / n_test real CIFAR-10 images (train.npz / test.npz in `root`), through
    the engine's own npz loader; random uint8 images of the same shape when they are absent."""
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        data = load(spec.Dataset("npz", root=str(root)), 0)
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
        y = torch.arange(n_train + n_test) % 10
        mean, std = channel_stats(x[:n_train])
        data = ImageData(x[:n_train], y[:n_train], None, None, x[n_train:], y[n_train:], 10, 3, mean, std, "random")
    if n_train > len(data.train_x) or n_test > len(data.test_x):
        raise SystemExit(f"{root}: asked for {n_train} train / {n_test} test images, "
                         f"found {len(data.train_x)} / {len(data.test_x)}")
    return dataclasses.replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                               test_x=data.test_x[:n_test], test_y=data.test_y[:n_test])


def experiment(model: str, batch_size: int, epochs: int = 1, objective: str = "ban", augment: bool = True,
               **training) -> spec.Experiment:
    """A two-generation experiment (0: ce teacher, 1: `objective` student), checked by engine.spec;
    `training` adds experiment-wide training keys (precision, teacher_cache, compile...)."""
    lines = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in training.items())
    text = CONFIG.format(root=CIFAR10, augment=str(augment).lower(), model=model, epochs=epochs,
                         batch_size=batch_size, training=lines, objective=objective)
    return spec.loads(text).experiments["bench"]


def run_engine(exp: spec.Experiment, data: ImageData, gen: int, teacher, device: torch.device) -> tuple[float, list]:
    """(wall seconds of one train_generation call, its epoch events), in a throw-away run dir."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(exp=exp, seed=0, paths=RunPaths(Path(tmp)), device=device,
                      events=EventWriter(Path(tmp) / "events.jsonl", "bench"))
        t0 = time.perf_counter()
        train_generation(ctx, exp.generations[gen], teacher, ImageClassifier(data))
        seconds = time.perf_counter() - t0
        ctx.events.close()
        return seconds, [e for e in read_events(Path(tmp) / "events.jsonl") if e["kind"] == "epoch"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fast_path(device: torch.device, model: str | None = None) -> tuple:
    """(autocast context factory, memory format, fused) as the engine picks them by default."""
    dtype = autocast_dtype("auto", device, model)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    cuda, last = device.type == "cuda", hardware.channels_last(None, device, model or "")
    return autocast, torch.channels_last if last else torch.preserve_format, True if cuda else None


def sgd_step(model, opt, x, y, autocast) -> None:
    """One plain training step: forward under `autocast`, cross-entropy in fp32, backward, SGD."""
    with autocast():
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bare_loop(exp: spec.Experiment, data: ImageData, device: torch.device, seed: int) -> tuple[float, float]:
    """(total seconds, loop seconds) of a hand-written epoch of plain cross-entropy SGD, then
    the test set's loss, errors and probabilities."""
    t0 = time.perf_counter()
    autocast, memory_format, fused = fast_path(device, exp.generations[0].model)
    t, augment = exp.generations[0].training, exp.dataset.augment
    torch.manual_seed(seed)
    model = models.build(exp.generations[0].model, data.num_classes, data.in_channels)
    model.to(device, memory_format=memory_format).train()
    o = t.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay, fused=fused)
    batches = Batches(data.train_x, data.train_y, t.batch_size, data.mean, data.std, shuffle=True, augment=augment,
                      seed=seed, device=device, channels_last=memory_format == torch.channels_last)
    t1 = time.perf_counter()
    for x, y in batches:
        sgd_step(model, opt, x, y, autocast)
    sync(device)
    t2 = time.perf_counter()
    model.eval()   # and the test pass every training loop has: loss, errors, probabilities
    test = Batches(data.test_x, data.test_y, t.eval_batch_size, data.mean, data.std, shuffle=False, augment=False,
                   seed=seed, device=device, channels_last=memory_format == torch.channels_last)
    with torch.inference_mode():
        loss, err, probs = 0.0, 0.0, []
        for x, y in test:
            with autocast():
                logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            err += (logits.argmax(1) != y).sum().item()
            probs.append(F.softmax(logits, dim=1).cpu())
        torch.cat(probs).numpy()
    return time.perf_counter() - t0, t2 - t1


def interleaved(contenders: dict, repeats: int, warmup: bool = True) -> dict:
    """{name: [result of each round]}: every round calls each contender once, in turn (reversed
    every other round), so load from other jobs on the machine and the order hit all of them
    alike; a first warm-up round is dropped."""
    results = {name: [] for name in contenders}
    for r in range(0 if warmup else 1, repeats + 1):
        for name in list(contenders)[::-1 if r % 2 else 1]:
            out = contenders[name]()
            if r:
                results[name].append(out)
        print(f"  round {r}/{repeats}" + (" (warm-up)" if r == 0 else ""), flush=True)
    return results


def per_call_us(fn, calls: int = 200, device=None) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls * 1e6


def step_extras(batch_size: int, num_classes: int, steps: int, device: torch.device) -> dict:
    """Microseconds per step of each thing the engine's loop does beyond a bare step, timed alone
    on tensors of the step's shapes (engine/tasks/image.py, ImageLoop.train): the diagnostics
    stay on the device (no sync), and the read-back's host sync is shared by READ_BACK_STEPS steps."""
    from engine.objectives import diagnostic_sums
    from engine.tasks import READ_BACK_STEPS
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch_size, num_classes, generator=g).to(device)
    teacher = torch.randn(batch_size, num_classes, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    loss = F.cross_entropy(logits, labels)
    train_y = torch.randint(0, num_classes, (steps * batch_size,), generator=g).to(device)
    idx = torch.randperm(steps * batch_size, generator=g)[:batch_size].to(device)
    schedule = LRSchedule(spec.Schedule("cosine"), 0.1, 1, steps)
    return {
        "learning rate schedule(step)": per_call_us(lambda: schedule(3), device=device),
        "label lookup train_y[idx]": per_call_us(lambda: train_y[idx], device=device),
        "loss + errors stacked on the device": per_call_us(
            lambda: torch.stack([loss.detach().float(), (logits.argmax(1) != labels).sum().float()]), device=device),
        f"read-back .tolist() (a host sync) / {READ_BACK_STEPS}": per_call_us(
            lambda: torch.stack([loss.detach().float()] * READ_BACK_STEPS).tolist(), device=device) / READ_BACK_STEPS,
        "diagnostic sums, objective ce": per_call_us(lambda: diagnostic_sums(logits, None, labels, "ce"), device=device),
        "diagnostic sums, objective ban": per_call_us(
            lambda: diagnostic_sums(logits, teacher, labels, "ban"), device=device),
    }


def common_args(description: str, repeats: int):
    """The arguments, thread count, device and data every step benchmark shares."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default="preact-resnet-8")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hardware.configure_kernels(device)   # as the engine's defaults: cuDNN autotuning on a GPU, no TF32
    return args, device, cifar10(args.steps * args.batch_size, 256)


def main():
    args, device, data = common_args(__doc__.splitlines()[0], repeats=5)
    exp = experiment(args.model, args.batch_size)
    print(f"(a) engine step vs bare loop: {args.model}, batch {args.batch_size}, {args.steps} steps, "
          f"{len(data.test_x)} test images, {args.device}, {args.threads} thread(s), data {data.name}, "
          f"torch {torch.__version__}", flush=True)

    results = interleaved({"engine": lambda: run_engine(exp, data, 0, None, device),
                           "bare": lambda: bare_loop(exp, data, device, seed=0)}, args.repeats)
    engine_total = [s for s, _ in results["engine"]]
    engine_loop = [ev[-1]["samples"] / ev[-1]["samples_per_s"] for _, ev in results["engine"]]
    bare_total = [s for s, _ in results["bare"]]
    bare_loop_s = [s for _, s in results["bare"]]
    whole = statistics.median(e / b for e, b in zip(engine_total, bare_total))
    loop = statistics.median(e / b for e, b in zip(engine_loop, bare_loop_s))
    print(f"{'':8} {'call s (median)':>16} {'loop s (median)':>16}")
    print(f"{'engine':8} {statistics.median(engine_total):>16.3f} {statistics.median(engine_loop):>16.3f}")
    print(f"{'bare':8} {statistics.median(bare_total):>16.3f} {statistics.median(bare_loop_s):>16.3f}")
    print(f"ratio engine/bare: whole call {whole:.3f}x, training loop {loop:.3f}x (goal <= 1.05x); "
          f"each repeat: " + ", ".join(f"{e / b:.3f}" for e, b in zip(engine_loop, bare_loop_s)))

    bare_step_us = statistics.median(bare_loop_s) / args.steps * 1e6
    print(f"per-step extras of the engine's loop (bare step {bare_step_us:,.0f} us):")
    for what, us in step_extras(args.batch_size, data.num_classes, args.steps, device).items():
        print(f"  {what:<42} {us:>9.1f} us  {100 * us / bare_step_us:6.2f}% of a bare step")


if __name__ == "__main__":
    main()
