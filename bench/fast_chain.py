"""(d) The `cifar10-fast` preset's whole chain (teacher + 3 BAN generations, Ens*2 and Ens*3) on
real CIFAR-10, timed per generation (goal on an H200: every generation under 10 s).

    .venv/bin/python bench/fast_chain.py [--data full|subset] [--compile] [--runs-dir /tmp/fast-chain]
                                         [--config experiments.toml] [--experiment cifar10-fast]
    .venv/bin/python bench/fast_chain.py --smoke   # the CPU: width 1/16, 1 epoch, 512 images

The experiment is read from the config file (the preset lives in experiments.toml) with its data
root replaced: `full` decodes all 50,000 training images of train50k_test2k_jpeg.npz (and its
2,000 test images) with Pillow into train.npz / test.npz under the runs dir, once (--jpeg names
another copy); `subset` uses the shipped 10,000 / 2,000 train.npz / test.npz as they are (in
$BAN_CIFAR10 if set). The chain runs through `python -m engine run --device cuda`, as `ban run`
starts it, and the table comes from its events: per generation the engine's own seconds (its
epochs with their test passes), the wall seconds from gen_start to gen_end (model build, teacher
load and checkpoints too) and the test accuracy; then the ensembles. Without CUDA it says so and
exits 0, unless --smoke.
"""
import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine import checkpoint, runs, spec
from engine.events import EventReader
from step_overhead import CIFAR10

REPO = Path(__file__).resolve().parents[1]
JPEG = REPO.parent / "shared" / "data" / "cifar10" / "train50k_test2k_jpeg.npz"
GOAL_SECONDS = 10.0


def decode_jpeg(out: Path, n_train: int | None = None, n_test: int | None = None, source: Path = JPEG) -> Path:
    """train.npz / test.npz (x uint8 NHWC, y) in `out` from the JPEG set, the first n of each
    split (all by default); kept once written (temp file + rename, so never half of one)."""
    from PIL import Image
    if (out / "train.npz").is_file() and (out / "test.npz").is_file():
        return out
    with np.load(source) as d:
        for split, n in (("train", n_train), ("test", n_test)):
            data, offsets, y = d[f"{split}_jpeg"], d[f"{split}_offsets"], d[f"{split}_y"]
            n = len(y) if n is None else n
            x = np.stack([np.asarray(Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                          for i in range(n)])
            buf = io.BytesIO()
            np.savez(buf, x=x, y=y[:n])
            checkpoint.write_atomic(out / f"{split}.npz", buf.getvalue())
    return out


def follow(cmd: list, root: Path, env: dict) -> tuple[int, runs.RunState, dict]:
    """Run the engine; print each generation and ensemble as its event arrives. Returns (exit
    status, the folded run state, {gen: wall seconds from gen_start to gen_end})."""
    proc = subprocess.Popen(cmd, env=env)
    reader, state, started, wall = EventReader(root / "events.jsonl"), runs.RunState(), {}, {}
    while True:
        done = proc.poll() is not None
        for e in reader.poll():
            state.apply(e)
            if e["kind"] == "gen_start":
                started[e["gen"]] = e["ts"]
            elif e["kind"] == "gen_end":
                wall[e["gen"]] = e["ts"] - started.get(e["gen"], e["ts"])
                print(f"  {runs.gen_label(e['gen'])} done: {e['seconds']:.1f} s, "
                      f"test acc {100 * (1 - e['final']['test_err']):.2f}%", flush=True)
        if done:
            return proc.returncode, state, wall
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("full", "subset"), default="full")
    ap.add_argument("--jpeg", default=str(JPEG), help="the 50k JPEG set (for --data full and --smoke)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every generation")
    ap.add_argument("--runs-dir", default="/tmp/fast-chain")
    ap.add_argument("--config", default=str(REPO / "experiments.toml"))
    ap.add_argument("--experiment", default="cifar10-fast")
    ap.add_argument("--smoke", action="store_true", help="run on the CPU: width 1/16, 1 epoch, 512 images")
    args = ap.parse_args()
    import torch   # after the arguments: --help needs no torch
    if not args.smoke and not torch.cuda.is_available():
        print("(d) fast_chain: skipped: no CUDA device here (the preset's timing goal is for a GPU; "
              "--smoke runs the chain on the CPU with a tiny model)")
        return

    cfg = spec.load(args.config)
    if args.experiment not in cfg.experiments:
        sys.exit(f"{args.config}: --experiment: expected one of {', '.join(cfg.experiments)}, "
                 f"found {args.experiment!r}")
    exp = cfg.experiments[args.experiment]
    runs_dir = Path(args.runs_dir).resolve()
    exp.dataset.name = "npz"   # the preset reads torchvision's CIFAR-10; here the shipped real images
    if args.smoke:
        exp.dataset.root = str(decode_jpeg(runs_dir / "data-smoke", 512, 128, Path(args.jpeg)))
        for g in exp.generations:
            g.training.epochs, g.model_options = 1, {**g.model_options, "width": 0.0625}
    else:
        exp.dataset.root = str(decode_jpeg(runs_dir / "data-50k", source=Path(args.jpeg)) if args.data == "full" else str(CIFAR10))
    for g in exp.generations:
        g.training.compile = g.training.compile or args.compile
    config = runs_dir / f"{exp.name}.toml"
    checkpoint.write_text(config, spec.dumps_experiment(exp))
    device = "cpu" if args.smoke else "cuda"
    run_id = runs.new_run_id(exp.seeds[0])
    root = runs.run_dir(runs_dir, exp.name, run_id)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(f"(d) {exp.name}: {len(exp.generations)} generations of {exp.generations[0].model}, "
          f"{exp.generations[0].training.epochs} epochs each, data {exp.dataset.root}, {name}\nrun {root}", flush=True)

    t0 = time.time()
    cmd = [sys.executable, "-m", "engine", "run", str(config), "--experiment", exp.name,
           "--runs-dir", str(runs_dir), "--run-id", run_id, "--device", device]
    status, state, wall = follow(cmd, root, dict(os.environ, PYTHONUNBUFFERED="1"))
    if status != 0 or state.end is None or state.end.get("status") != "ok":
        sys.exit(f"the run failed (exit {status}): see {root}/stderr.log and the events")

    print(f"\n{'':>8} {'objective':>9} {'epochs':>6} {'engine s':>9} {'wall s':>7} {'test acc':>9}")
    for g in state.gens.values():
        print(f"{g.label:>8} {g.objective:>9} {g.epochs:>6} {g.seconds:>9.1f} {wall[g.gen]:>7.1f} "
              f"{100 * (1 - g.final['test_err']):>8.2f}%" + ("" if wall[g.gen] < GOAL_SECONDS else "  (over 10 s)"))
    for k, e in state.ensembles.items():
        label = "Ens*" + str(k)
        print(f"{label:>8} {'+'.join(runs.gen_label(m) for m in e['members']):>33} {100 * (1 - e['test_err']):>8.2f}%")
    print(f"whole chain: {time.time() - t0:.1f} s wall (engine start-up and ensembles included); "
          f"slowest generation {max(wall.values()):.1f} s wall (goal < {GOAL_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
