"""Reproduce the paper's claims at CPU scale on real CIFAR-10 and write the table (issue 8).

    nohup .venv/bin/python bench/repro.py > repro.log 2>&1 &      # about an hour on 2 cores

1. Writes data/cifar10-2k/{train,test}.npz from ../shared/data/cifar10 (the first 2,000 training
   images, 200 per class, and the 2,000 test images).
2. Runs the `repro-*` experiments of experiments.toml (teacher + 3 BAN, teacher + 3 BAN+L,
   teacher + CWTM, teacher + DKPP; 3 seeds each) through `python -m engine run`, JOBS engines at
   a time with one thread each, into runs-repro/ (finished runs are kept: rerunning resumes
   nothing and retrains only what is missing).
3. Writes bench/results/repro.md (the Markdown table of `ban report`, the teachers' training
   error, the hardware and the wall time) and bench/results/repro.json (`ban report --format json`).
Model selection never looks at the test set: every number is the last epoch's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine import spec  # noqa: E402
from engine.runs import list_runs, load_state  # noqa: E402
from ban_tui import report  # noqa: E402

EXPERIMENTS = ("repro-ban", "repro-banl", "repro-cwtm", "repro-dkpp")


def prepare_data(shared: Path, out: Path, n_train: int) -> None:
    if (out / "train.npz").exists() and (out / "test.npz").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    train, test = np.load(shared / "train.npz"), np.load(shared / "test.npz")
    # the files are stored round-robin by class: any prefix of a multiple of 10 is balanced
    np.savez(out / "train.npz", x=train["x"][:n_train], y=train["y"][:n_train])
    np.savez(out / "test.npz", x=test["x"], y=test["y"])


def finished(runs_dir: Path, name: str, seed: int) -> bool:
    return any(load_state(r).seed == seed and load_state(r).status() == "ok"
               for r in list_runs(runs_dir) if r.parent.name == name)


def run_one(config: Path, runs_dir: Path, name: str, seed: int) -> tuple[str, int, int, float]:
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", name,
                        "--seed", str(seed), "--runs-dir", str(runs_dir)], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        print(f"{name} seed {seed}: exit {p.returncode}: {p.stderr.strip()[-300:]}", flush=True)
    return name, seed, p.returncode, time.time() - t0


def teacher_train_errors(runs: list[Path]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in runs:
        s = load_state(r)
        if s.status() == "ok" and 0 in s.gens:
            out.setdefault(s.experiment, []).append(s.gens[0].final.get("train_err"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "experiments.toml")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs-repro")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    config = spec.load(args.config)
    prepare_data(args.shared, ROOT / config.experiments[EXPERIMENTS[0]].dataset.root, 2000)
    # seed by seed: if time runs out, the seeds that finished are complete rows
    seeds = sorted({s for name in EXPERIMENTS for s in config.experiments[name].seeds})
    todo = [(name, seed) for seed in seeds for name in EXPERIMENTS
            if seed in config.experiments[name].seeds and not finished(args.runs_dir, name, seed)]
    t0 = time.time()
    print(f"{len(todo)} chains to run, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, seed, rc, sec in pool.map(lambda a: run_one(args.config, args.runs_dir, *a), todo):
            print(f"{name} seed {seed}: {'ok' if rc == 0 else 'FAILED'} in {sec / 60:.1f} min", flush=True)
    wall = time.time() - t0

    runs = [r for r in list_runs(args.runs_dir) if r.parent.name in EXPERIMENTS]
    data = report.collect(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repro.json").write_text(json.dumps(data, indent=2) + "\n")
    teachers = teacher_train_errors(runs)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    lines = [report.to_markdown(data), "",
             "Teacher training error (last epoch, mean over seeds): "
             + ", ".join(f"{k} {100 * np.mean(v):.2f}%" for k, v in sorted(teachers.items())),
             f"Hardware: {os.cpu_count()} CPU cores ({cpu}), torch {__import__('torch').__version__}, "
             f"{args.jobs} engines at a time with one thread each. "
             f"Wall time of this invocation: {wall / 60:.1f} min for {len(todo)} chains."]
    (args.out / "repro.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
