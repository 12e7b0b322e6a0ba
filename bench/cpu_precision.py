"""CPU training speed by precision and memory layout (issue 13), and whether `precision = "auto"`
keeps the accuracy of fp32.

    .venv/bin/python bench/cpu_precision.py [--models preact-resnet-8,preact-resnet-20,wrn-16-2]
        [--batch-size 128] [--threads 1] [--repeats 5] [--compile] [--skip-steps]
        [--skip-accuracy] [--acc-model preact-resnet-8] [--acc-train 2000] [--acc-epochs 2]
        [--seeds 0,1,2] [--force-bf16]

1. Steps: one training step (forward, backward, SGD with momentum; batch 128 of real CIFAR-10
   images; one thread) per mode, the modes side by side: every round times one step of each mode
   in turn (bench/step_overhead.py's `interleaved`), 2 warm-up steps, then the median of 5.
   Modes: `fp32` (contiguous: the engine's CPU default before issue 13), `fp32-cl`
   (channels-last), `bf16-cl` (bf16 autocast + channels-last), `default` (what the engine picks
   now on this machine: engine/hardware.py) and, with --compile, `compiled` (the default mode
   under torch.compile, inductor's C++ backend: its first step, the compilation, is reported
   apart, with the number of steps it takes to pay for itself). Printed as ratios to `fp32`.
2. Accuracy: the same seeded chain (a ce teacher + one ban student, preact-resnet-8, the first
   2,000 training images of ../shared/data/cifar10 and its 2,000 test images, 2 epochs each) run
   by `python -m engine run` with precision = "fp32" for each seed, and with precision = "auto"
   for the first seed. Per generation: auto's test error minus fp32's on the same seed, against
   the spread (max - min) of fp32's test errors over the seeds. On a CPU without bf16 hardware
   auto is fp32 and the difference is 0 by construction; --force-bf16 runs the auto chain with
   BAN_FORCE_CPU_BF16=1, to check bf16's numbers there too (slowly: bf16 is emulated).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from engine import hardware, models
from engine.data import Batches
from repro import prepare_data
from step_overhead import CIFAR10, cifar10, interleaved, sgd_step

REPO = Path(__file__).resolve().parents[1]
MODELS = "preact-resnet-8,preact-resnet-20,wrn-16-2"
MODES = {"fp32": ("fp32", False), "fp32-cl": ("fp32", True), "bf16-cl": ("bf16", True)}

CHAIN = """
[[experiment]]
name = "acc"
dataset = {{ name = "npz", root = "{root}" }}
model = "{model}"
epochs = {epochs}
batch_size = 128
optimizer = {{ lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }}
schedule = "cosine"
precision = "{precision}"
device = "cpu"

[[experiment.generation]]
objective = "ce"

[[experiment.generation]]
objective = "ban"
"""


def stepper(model_name: str, data, batch_size: int, precision: str, channels_last: bool, compile: bool = False):
    """A function doing one training step of a fresh `model_name` (seed 0) on one real batch, in
    `precision` ("fp32" or "bf16" autocast) and layout; returns its seconds."""
    torch.manual_seed(0)
    model = models.build(model_name, 10, 3).to(memory_format=torch.channels_last if channels_last else torch.preserve_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net = torch.compile(model) if compile else model
    x, y = next(iter(Batches(data.train_x, data.train_y, batch_size, data.mean, data.std, shuffle=False,
                             augment=False, seed=0, device="cpu", channels_last=channels_last)))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

    def step() -> float:
        t0 = time.perf_counter()
        sgd_step(net, opt, x, y, autocast)
        return time.perf_counter() - t0
    return step


def step_table(args, data) -> None:
    cpu = torch.device("cpu")
    print(f"\n## Training step, batch {args.batch_size}, {args.threads} thread(s): ratio to fp32 contiguous "
          f"(higher is faster; median of {args.repeats} after 2 warm-up steps)\n", flush=True)
    head = ["model", *MODES, "default", "default is"] + (["compiled", "compile s", "pays after"] if args.compile else [])
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in args.models.split(","):
        default = (hardware.resolve_precision("auto", cpu, name), hardware.channels_last(None, cpu, name))
        modes = dict(MODES)
        label = next((k for k, v in modes.items() if v == default), None)
        if label is None:
            modes["default"], label = default, "default"
        steppers = {k: stepper(name, data, args.batch_size, *v) for k, v in modes.items()}
        compile_s = None
        if args.compile:
            steppers["compiled"] = stepper(name, data, args.batch_size, *default, compile=True)
            compile_s = steppers["compiled"]()   # the first step compiles (forward and backward)
        for s in steppers.values():   # warm-up step 1; interleaved's round 0 is warm-up step 2
            s()
        med = {k: statistics.median(v) for k, v in interleaved(steppers, args.repeats).items()}
        med.setdefault("default", med[label])
        ratio = {k: med["fp32"] / v for k, v in med.items()}
        row = [name, *(f"{ratio[k]:.2f}x" for k in MODES), f"{ratio['default']:.2f}x",
               label if label != "default" else f"{default[0]}{'-cl' if default[1] else ''}"]
        if args.compile:
            gain = med["default"] - med["compiled"]
            pays = f"{(compile_s - med['compiled']) / gain:.0f} steps" if gain > 0 else "never (slower)"
            row += [f"{ratio['compiled']:.2f}x", f"{compile_s:.0f}", pays]
        table.append("| " + " | ".join(row) + " |")
        print(f"  {name} step: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in med.items()), flush=True)
    print("\n" + "\n".join(table), flush=True)


def run_chain(config: Path, runs_dir: Path, seed: int, env: dict) -> dict:
    """{generation: final test error} of one engine run (exits on a failed run)."""
    p = subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", "acc", "--seed", str(seed),
                        "--runs-dir", str(runs_dir), "--run-id", f"{config.stem}-{seed}"], cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"{config.stem} seed {seed}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    results = json.loads((runs_dir / "acc" / f"{config.stem}-{seed}" / "results.json").read_text())
    return {g["gen"]: g["final"]["test_err"] for g in results["generations"]}


def accuracy_table(args) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    if not (CIFAR10 / "train.npz").is_file():
        raise SystemExit(f"{CIFAR10}: expected CIFAR-10's train.npz and test.npz there (or set $BAN_CIFAR10)")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), hardware.THREADS: str(args.threads)}
    env.pop(hardware.FORCE_BF16, None)
    auto_env = {**env, hardware.FORCE_BF16: "1"} if args.force_bf16 else env
    resolved = "bf16" if args.force_bf16 else hardware.resolve_precision("auto", torch.device("cpu"), args.acc_model)
    print(f"\n## Accuracy: teacher + BAN-1, {args.acc_model}, {args.acc_train} CIFAR-10 training images, "
          f"2,000 test images, {args.acc_epochs} epochs each; auto resolves to {resolved} here"
          + (" (forced by BAN_FORCE_CPU_BF16=1)" if args.force_bf16 else "") + "\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_data(CIFAR10, tmp / "data", args.acc_train)
        errs, seconds = {}, {}
        for precision in ("fp32", "auto"):
            config = tmp / f"{precision}.toml"
            config.write_text(CHAIN.format(root=tmp / "data", model=args.acc_model, epochs=args.acc_epochs,
                                           precision=precision))
            t0 = time.perf_counter()
            errs[precision] = {s: run_chain(config, tmp / "runs", s, auto_env if precision == "auto" else env)
                               for s in (seeds if precision == "fp32" else seeds[:1])}
            seconds[precision] = (time.perf_counter() - t0) / len(errs[precision])
            print(f"  {precision}: {seconds[precision]:.0f} s per chain", flush=True)
    print("\n| generation | fp32 seed " + " | fp32 seed ".join(map(str, seeds)) + f" | spread | auto seed {seeds[0]} "
          "| auto - fp32 | within spread |\n|" + "---|" * (len(seeds) + 5))
    for gen in sorted(errs["fp32"][seeds[0]]):
        fp32 = [errs["fp32"][s][gen] for s in seeds]
        spread, diff = max(fp32) - min(fp32), errs["auto"][seeds[0]][gen] - fp32[0]
        print(f"| {'Teacher' if gen == 0 else f'BAN-{gen}'} | " + " | ".join(f"{100 * e:.2f}%" for e in fp32)
              + f" | {100 * spread:.2f} | {100 * errs['auto'][seeds[0]][gen]:.2f}% | {100 * diff:+.2f} | "
              f"{'yes' if abs(diff) <= spread else 'NO'} |")
    print(f"\nwall seconds per chain, one after the other (not a speed measurement): fp32 {seconds['fp32']:.0f}, "
          f"auto {seconds['auto']:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time the default mode under torch.compile")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--acc-model", default="preact-resnet-8")
    ap.add_argument("--acc-train", type=int, default=2000)
    ap.add_argument("--acc-epochs", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--force-bf16", action="store_true", help="run the auto chain with BAN_FORCE_CPU_BF16=1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    caps = torch.cpu.get_capabilities()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, avx512_bf16 {caps.get('avx512_bf16', False)}, "
          f"amx_bf16 {caps.get('amx_bf16', False)}: cpu_bf16_capable() = {hardware.cpu_bf16_capable()}")
    if not args.skip_steps:
        step_table(args, cifar10(args.batch_size, 0))
    if not args.skip_accuracy:
        accuracy_table(args)


if __name__ == "__main__":
    main()
