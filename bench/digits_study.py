"""A CPU study that can resolve about one point (issue 26, item 7). One command:

    nice -n 5 .venv/bin/python bench/digits_study.py     # writes bench/results/digits_study.json
                                                          # and its table into docs/results.md

The task: scikit-learn's bundled 8x8 digits (no download) cut to N_TRAIN training images, the
fixed 359-image test split, a half-width cnn-small (11k parameters): a teacher that fits its
training set without memorising the test set. SEEDS seeds of one chain each (one engine process per seed: on a loaded 2-core machine the
start of a process costs as much as a generation):

    generation 0 the teacher (ce); 1..3 BAN-1..3, each taught by the previous (Ens*2, Ens*3 over
    them); 4 label smoothing (`ls` 0.1, no teacher: LS-4); 5..7 the independent-CE control,
    plain CE models from fresh derived seeds (CE-5..7, read as CE-1..3), whose Ens*2 / Ens*3
    this script averages from their stored probabilities as the engine averages BAN's.

Every claim is a paired difference over seeds (ban_tui.report.paired: the Student-t interval,
seed noise; the paired bootstrap over seeds x test examples, B = 2000 from probs/; the minimum
detectable effect at 80 % power), then Holm's adjustment over all the claims and the verdict
(ban_tui.report.judge; docs/statistics.md). The run_start
events say what each run resolved to (precision, threads, CPU); the table states them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ban_tui import report  # noqa: E402
from engine.events import read_events  # noqa: E402
from engine.runs import list_runs, load_state  # noqa: E402

N_TRAIN = 200
EPOCHS = 25
SEEDS = list(range(20))
MAIN = "study"
CONTROL = {1: "CE-5", 2: "CE-6", 3: "CE-7"}     # BAN-k is read against CE-(k+4)
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- BEGIN digits_study -->\n", "<!-- END digits_study -->\n"

COMMON = f"""dataset = {{ name = "digits", options = {{ train_images = {N_TRAIN} }} }}
model = "cnn-small"
model_options = {{ width = 0.5 }}
epochs = {EPOCHS}
batch_size = 32
optimizer = {{ lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }}
schedule = "cosine"
device = "cpu"
precision = "fp32"
ensembles = [2, 3]
seeds = {SEEDS}
"""


def gen(objective: str, teacher=None, extra: str = "") -> str:
    return (f'[[experiment.generation]]\nobjective = "{objective}"\n' + extra
            + (f"teacher = {teacher}\n" if teacher is not None else ""))


def config_text() -> str:
    return (f'[[experiment]]\nname = "{MAIN}"\n' + COMMON + gen("ce") + gen("ban", 0) + gen("ban", 1)
            + gen("ban", 2) + gen("ls", extra="objective_options = { smoothing = 0.1 }\n") + gen("ce") * 3)


def run_one(config: Path, runs_dir: Path, name: str, seed: int) -> tuple[str, int, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAN_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", name,
                        "--seed", str(seed), "--runs-dir", str(runs_dir)], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        print(f"{name} seed {seed}: exit {p.returncode}: {p.stderr.strip()[-300:]}", flush=True)
    return name, seed, p.returncode


def ce_ensembles(rep_runs: dict) -> tuple[dict, dict]:
    """({"CE Ens*k": {seed: test err}}, {"CE Ens*k": {seed: per-example errors}}) of the control's
    models CE-5..CE-(4+k), their probabilities averaged in float64 as engine.tasks.image does."""
    values, errors = {}, {}
    for seed, r in rep_runs.items():
        paths = report.RunPaths(r["dir"])
        y = np.load(paths.test_labels)
        probs = {g: np.load(paths.gen_probs(g)).astype(np.float64) for g in (5, 6, 7)}
        for k in (2, 3):
            wrong = np.mean(np.stack([probs[g] for g in range(5, 5 + k)]), axis=0).argmax(1) != y
            values.setdefault(f"CE Ens*{k}", {})[seed] = float(wrong.mean())
            errors.setdefault(f"CE Ens*{k}", {})[seed] = wrong
    return values, errors


def claims(run_dirs) -> list[tuple[str, dict]]:
    """(claim, paired difference) in the order printed, Holm-adjusted together."""
    groups, _, _ = report.select(report.load_runs(run_dirs))
    (seeds,) = [v for (name, _), v in groups.items() if name == MAIN]
    _, values = report.group_values(seeds)
    errors = report.group_errors(seeds)
    v2, e2 = ce_ensembles(seeds)
    values, errors = {**values, **v2}, {**errors, **e2}
    pairs = [(label, "Teacher") for label in ("BAN-1", "BAN-2", "BAN-3", "LS-4", "Ens*2", "Ens*3")]
    pairs += [(f"BAN-{k}", c) for k, c in CONTROL.items()] + [("Ens*2", "CE Ens*2"), ("Ens*3", "CE Ens*3")]
    rows = [(f"{a} − {b}" + (" (independent CE)" if b.startswith("CE") else ""),
             report.paired(values[a], values[b], errors.get(a), errors.get(b))) for a, b in pairs]
    report.judge([d for _, d in rows])
    return rows, values


def setting(run_dirs) -> str:
    starts = [e for d in run_dirs for e in read_events(d / "events.jsonl") if e["kind"] == "run_start"]
    cpus = sorted({(e.get("machine") or {}).get("cpu", "?") for e in starts})
    precisions = sorted({g["precision"] for e in starts for g in (e.get("resolved") or {}).get("generations", [])})
    threads = sorted({e.get("threads") for e in starts})
    torch_v = sorted({e["versions"].get("torch") for e in starts})
    return (f"CPU {', '.join(cpus)}; precision {', '.join(precisions)}; {', '.join(map(str, threads))} thread(s) "
            f"per engine; torch {', '.join(torch_v)}")


def fmt(x, f=100.0, spec="+.2f") -> str:
    return "n/a" if x is None else format(x * f, spec)


def table(rows, values) -> str:
    lines = ["| claim (paired Δ test error, points) | Δ | 95 % t CI (seeds) | 95 % bootstrap CI (seeds × test) "
             "| Holm p | MDE 80 % | n | verdict |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for claim, d in rows:
        ci = "n/a" if d["ci"] is None else f"[{fmt(d['ci'][0])}, {fmt(d['ci'][1])}]"
        boot = "n/a" if d["boot_ci"] is None else f"[{fmt(d['boot_ci'][0])}, {fmt(d['boot_ci'][1])}]"
        lines.append(f"| {claim} | {fmt(d['mean'])} | {ci} | {boot} | {fmt(d['p_holm'], 1, '.3g')} "
                     f"| {fmt(d['mde'], 100, '.2f')} | {d['n']} | {d['verdict']} |")
    means = ", ".join(f"{k} {fmt(statistics.fmean(v.values()), 100, '.2f')} ± "
                      f"{fmt(statistics.stdev(v.values()) if len(v) > 1 else None, 100, '.2f')}"
                      for k, v in values.items())
    return "\n".join(lines) + f"\n\nTest error % (mean ± sd over seeds): {means}.\n"


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + block + END + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text else "") + BEGIN + block + END
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs-digits-study")
    ap.add_argument("--jobs", type=int, default=2, help="engines at a time (one thread each)")
    args = ap.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    config = args.runs_dir / "study.toml"
    config.write_text(config_text())
    done = {(load_state(r).experiment, load_state(r).seed) for r in list_runs(args.runs_dir)
            if load_state(r).status() == "ok"}
    todo = [(MAIN, s) for s in SEEDS if (MAIN, s) not in done]
    load0 = os.getloadavg()
    t0 = time.time()
    print(f"{len(todo)} chains, {args.jobs} at a time; load average {load0[0]:.1f}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, seed, rc in pool.map(lambda a: run_one(config, args.runs_dir, *a), todo):
            print(f"{name} seed {seed}: {'ok' if rc == 0 else 'FAILED'} at {(time.time() - t0) / 60:.1f} min", flush=True)
    wall, load1 = time.time() - t0, os.getloadavg()
    run_dirs = [r for r in list_runs(args.runs_dir) if r.parent.name == MAIN]
    rows, values = claims(run_dirs)
    cmd = "nice -n 5 .venv/bin/python bench/digits_study.py"
    block = (f"Command: `{cmd}` ({len(todo)} chains this invocation, {args.jobs} engines at a time, one thread each). "
             f"Wall time: {wall / 60:.1f} min on a 2-core machine shared with other work (1-min load average "
             f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end). {setting(run_dirs)}. "
             f"Digits, {N_TRAIN} training images, 359 test images, cnn-small width 0.5, {EPOCHS} epochs, "
             f"{len(SEEDS)} seeds. Holm's adjustment is over the {len(rows)} claims below; bootstrap "
             f"B {report.inference.BOOTSTRAP_B}, seed {report.inference.BOOTSTRAP_SEED}.\n\n" + table(rows, values))
    write_doc(block)
    out = ROOT / "bench" / "results" / "digits_study.json"
    out.write_text(json.dumps({"wall_s": wall, "load": [load0[0], load1[0]], "setting": setting(run_dirs),
                               "claims": [{"claim": c, **{k: d[k] for k in ("mean", "std", "n", "ci", "boot_ci", "p",
                                                                             "p_holm", "mde", "verdict", "seeds", "values")}}
                                          for c, d in rows]}, indent=1) + "\n")
    print(block)


if __name__ == "__main__":
    main()
