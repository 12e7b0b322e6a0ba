"""A CPU reproduction of the paper's claims in the regime the paper is about: a teacher that fits
its training set (issue 16, point 6). One command:

    nice -n 5 .venv/bin/python bench/repro.py          # writes bench/results/repro16.{md,json}

The regime: the paper's teachers reach ~0 training error; a student can only add something
beyond fitting the labels when the teacher fits them. The fit criterion is gen_end's
`train_eval_err` (the trained teacher evaluated on its training set in eval mode, no
augmentation); the target is <= 2 % (`FIT_TARGET`) for every seed's teacher, and the output says
whether each reached it. Data: N_TRAIN CIFAR-10 training images and the first N_TEST test images
(both class-balanced: the shared files are stored round-robin by class), from
../shared/data/cifar10 (npz, written under data/repro16-cifar10/); no augmentation.

One teacher per seed, shared by every row: experiment `r16` is one explicit chain per seed,
generation 0 the teacher (ce), 1..3 BAN-1..3 (each taught by the previous, Ens*2/Ens*3 over
them), then, each taught by generation 0: 4 BAN+L, 5 CWTM, 6 DKPP, and 7 label smoothing (`ls`,
no teacher). The teacher's logits are cached (teacher_cache: no augmentation, so they are the
same every epoch). The control `r16+ce` trains 3 `ce` models from fresh derived seeds (CE-1..3;
its generation 0 is a 1-epoch placeholder, since a chain needs one, and is left out of the
report), so its Ens*2/Ens*3 average 2/3 independent CE models: `ban report` pairs r16's Ens*k with them. Every number is
the last epoch's test error; `ban_tui.report` pairs each column with the teacher of its seed
(95 % Student-t intervals). Writes the report with the columns named by what they train, the
claims of the paper held/not held, the teachers' fit, the hardware and the wall time; commit the
per-seed numbers (the json), not the runs.
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
from engine.runs import list_runs, load_state  # noqa: E402
from ban_tui import report  # noqa: E402

N_TRAIN = 200
N_TEST = 1000
EPOCHS = 35          # every generation: the pilot's teachers fit their training set at 35 (0 errors), not always at 25
SEEDS = [0, 1, 2, 3, 4]
FIT_TARGET = 0.02
DATA = ROOT / "data" / "repro16-cifar10"
MAIN, CONTROL, PILOT = "r16", "r16+ce", "r16-pilot"

COMMON = """dataset = {{ name = "npz", root = "{root}", augment = false }}
model = "preact-resnet-8"
model_options = {{ width = 1 }}
epochs = {epochs}
batch_size = 20
eval_batch_size = 500
optimizer = {{ lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }}
schedule = "cosine"
teacher_cache = true
device = "cpu"
precision = "fp32"
seeds = {seeds}
"""
# generation index: (objective, teacher, its column's name in the report)
CHAIN = [("ce", None, "Teacher"), ("ban", 0, "BAN-1"), ("ban", 1, "BAN-2"), ("ban", 2, "BAN-3"),
         ("ban+l", 0, "BAN+L"), ("cwtm", 0, "CWTM"), ("dkpp", 0, "DKPP"), ("ls", None, "LS")]
NAMES = {"BAN-4": "BAN+L", "BAN-5": "CWTM", "BAN-6": "DKPP", "LS-7": "LS"}   # report label -> row


def prepare_data(shared: Path) -> None:
    """train.npz (N_TRAIN balanced images) and test.npz (the first N_TEST test images)."""
    if (DATA / "test.npz").exists():
        return
    train, test = np.load(shared / "train.npz"), np.load(shared / "test.npz")
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez(DATA / "train.npz", x=train["x"][:N_TRAIN], y=train["y"][:N_TRAIN])
    np.savez(DATA / "test.npz", x=test["x"][:N_TEST], y=test["y"][:N_TEST])


def generation(objective: str, teacher, epochs: int | None = None) -> str:
    line = f'[[experiment.generation]]\nobjective = "{objective}"\n'
    if epochs is not None:
        line += f"epochs = {epochs}\n"
    if objective == "ls":
        line += "objective_options = { smoothing = 0.1 }\n"
    return line + (f"teacher = {teacher}\n" if teacher is not None and objective != "ce" else "")


def config_text(epochs: int, teacher_epochs: int, seeds: list[int]) -> str:
    head = COMMON.format(root=DATA, epochs=epochs, seeds=seeds)
    chains = head + "ensembles = [2, 3]\n"   # the pilot's teacher alone has no ensemble
    main = f'[[experiment]]\nname = "{MAIN}"\n' + chains + "".join(
        generation(o, t, teacher_epochs if o == "ce" else None) for o, t, _ in CHAIN)
    # a chain needs a generation 0; the control's is a 1-epoch placeholder, left out of the report
    control = (f'[[experiment]]\nname = "{CONTROL}"\n' + chains + generation("ce", None, 1)
               + "".join(generation("ce", None, teacher_epochs) for _ in range(3)))
    # the pilot: the teacher alone, to check the fit target before the whole reproduction
    pilot = f'[[experiment]]\nname = "{PILOT}"\n' + head + generation("ce", None, teacher_epochs)
    return main + "\n" + control + "\n" + pilot


def run_one(config: Path, runs_dir: Path, name: str, seed: int) -> tuple[str, int, int, float]:
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", name,
                        "--seed", str(seed), "--runs-dir", str(runs_dir)], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        print(f"{name} seed {seed}: exit {p.returncode}: {p.stderr.strip()[-300:]}", flush=True)
    return name, seed, p.returncode, time.time() - t0


def ok_seeds(runs_dir: Path, name: str, statuses=("ok",)) -> set:
    states = [load_state(r) for r in list_runs(runs_dir) if r.parent.name == name]
    return {s.seed for s in states if s.status() in statuses}


def wall_seconds(run_dirs) -> float:
    """From the first chain's first event to the last chain's last (so a resumed invocation
    of this script still reports the whole reproduction's wall time)."""
    from engine.events import read_events
    ts = [e["ts"] for r in run_dirs for e in read_events(r / "events.jsonl")]
    return max(ts) - min(ts) if ts else 0.0


def teacher_fit(runs_dir: Path, name: str = MAIN) -> dict:
    """Per seed: the teacher's eval-mode training error (gen_end's train_eval_err) and its
    running train-mode error of the last epoch."""
    out = {}
    for r in list_runs(runs_dir):
        s = load_state(r)
        if r.parent.name == name and s.status() == "ok" and 0 in s.gens:
            f = s.gens[0].final
            out[s.seed] = {"train_eval_err": f.get("train_eval_err"), "train_err_running": f.get("train_err")}
    return dict(sorted(out.items()))


def verdict(d: dict | None) -> str:
    if not d or not d["ci"]:
        return "no CI"
    lo, hi = d["ci"]
    return "held" if hi < 0 else "reversed" if lo > 0 else "not resolved (CI covers 0)"


def claims(data: dict) -> list[dict]:
    """Each claim as a paired difference a - b (negative: a has the lower test error)."""
    main = next(e for e in data["experiments"] if e["name"] == MAIN)
    cols = main["columns"]

    def per_seed(label):
        c = cols[label]
        return dict(zip(c["seeds"], c["values"]))

    def diff(a, b):
        return report.paired(per_seed(a), per_seed(b))
    rows = [("BAN-1 beats its teacher", "BAN-1", "Teacher", cols["BAN-1"]["vs_teacher"]),
            ("Ens*2 beats a single BAN-1", "Ens*2", "BAN-1", diff("Ens*2", "BAN-1")),
            ("Ens*3 beats a single BAN-1", "Ens*3", "BAN-1", diff("Ens*3", "BAN-1")),
            ("BAN (no label term) beats BAN+L", "BAN-1", "BAN+L", diff("BAN-1", "BAN+L")),
            ("CWTM keeps part of the gain (beats the teacher)", "CWTM", "Teacher", cols["CWTM"]["vs_teacher"]),
            ("DKPP keeps part of the gain (beats the teacher)", "DKPP", "Teacher", cols["DKPP"]["vs_teacher"]),
            ("BAN-1 beats label smoothing", "BAN-1", "LS", diff("BAN-1", "LS")),
            ("Ens*2 beats an ensemble of 2 independent CE models", "Ens*2", "CE Ens*2", cols["Ens*2"].get("vs_control")),
            ("Ens*3 beats an ensemble of 3 independent CE models", "Ens*3", "CE Ens*3", cols["Ens*3"].get("vs_control"))]
    return [{"claim": c, "a": a, "b": b, "diff": d, "verdict": verdict(d)} for c, a, b, d in rows]


def claims_markdown(rows: list[dict]) -> str:
    lines = ["| claim of the paper | paired Δ test err (points), a − b | 95 % CI | n | here |", "|---|---:|---:|---:|---|"]
    for r in rows:
        d = r["diff"]
        ci = f"[{100 * d['ci'][0]:+.2f}, {100 * d['ci'][1]:+.2f}]" if d and d["ci"] else "-"
        lines.append(f"| {r['claim']} ({r['a']} − {r['b']}) | {100 * d['mean']:+.2f} | {ci} | {d['n']} | {r['verdict']} |"
                     if d else f"| {r['claim']} | - | - | 0 | no data |")
    return "\n".join(lines)


def hardware(jobs: int) -> str:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {__import__('torch').__version__}, "
            f"{jobs} engines at a time with one thread each")


def run_all(config: Path, runs_dir: Path, jobs: int, names=(MAIN, CONTROL)) -> int:
    """The chains not yet ok (longest first), `jobs` at a time; how many ran."""
    todo = [(n, s) for n in names for s in SEEDS
            if s not in ok_seeds(runs_dir, n, ("ok", "running", "starting"))]
    print(f"{len(todo)} chains to run, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        for name, seed, rc, sec in pool.map(lambda a: run_one(config, runs_dir, *a), todo):
            print(f"{name} seed {seed}: {'ok' if rc == 0 else 'FAILED'} in {sec / 60:.1f} min", flush=True)
    return len(todo)


def write(out: Path, data: dict, wall: float, ran: int, jobs: int, epochs: int, invocation: float) -> None:
    fit = data["teacher_fit"]
    errs = [v["train_eval_err"] for v in fit.values() if v["train_eval_err"] is not None]
    in_regime = bool(errs) and max(errs) <= FIT_TARGET
    fit_line = (f"Teachers' eval-mode training error (gen_end train_eval_err), per seed: "
                + ", ".join(f"seed {s} {100 * v['train_eval_err']:.2f}%" for s, v in fit.items())
                + f"; target <= {100 * FIT_TARGET:.0f}%: {'met by every seed' if in_regime else 'NOT met'}.")
    setup = (f"Setup: {N_TRAIN} CIFAR-10 training images, the first {N_TEST} test images, no augmentation, "
             f"preact-resnet-8 width 1, {epochs} epochs, batch 20, SGD lr 0.05 cosine, {len(SEEDS)} seeds. "
             "Columns: " + ", ".join(f"{k} = {v}" for k, v in NAMES.items()) + " of chain r16 (report labels).")
    lines = ["## Claims", "", claims_markdown(data["claims"]), "", "## Report (test error %, last epoch)", "",
             report.to_markdown(data), "", fit_line, setup,
             f"Hardware: {hardware(jobs)}. Wall time: {wall / 60:.1f} min for {ran} chains (first event to last); "
             f"this invocation of the script: {invocation / 60:.1f} min."]
    pilot = data.get("pilot_fit")
    if pilot:
        lines.insert(lines.index(fit_line), "Pilot (`--pilot`, the teacher alone, run before): eval-mode training error "
                     + ", ".join(f"seed {s} {100 * v['train_eval_err']:.2f}%" for s, v in pilot.items()) + ".")
    out.mkdir(parents=True, exist_ok=True)
    (out / "repro16.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "repro16.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--teacher-epochs", type=int, help="the teacher's and the control's CE models' (default: --epochs)")
    ap.add_argument("--shared", type=Path, default=Path("/work/shared/data/cifar10"))
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs-repro16")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--report-only", action="store_true", help="train nothing: report the chains that ended ok")
    ap.add_argument("--pilot", action="store_true", help="train only each seed's teacher and print its fit")
    args = ap.parse_args()
    started = time.time()
    prepare_data(args.shared)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    config = args.runs_dir / "repro16.toml"
    args.teacher_epochs = args.teacher_epochs or args.epochs
    config.write_text(config_text(args.epochs, args.teacher_epochs, SEEDS))
    if args.pilot:
        t0 = time.time()
        run_all(config, args.runs_dir, args.jobs, (PILOT,))
        fit = teacher_fit(args.runs_dir, PILOT)
        print(f"pilot ({args.teacher_epochs} epochs, {(time.time() - t0) / 60:.1f} min): " + ", ".join(
            f"seed {s} train_eval_err {100 * v['train_eval_err']:.2f}%" for s, v in fit.items()))
        return
    if not args.report_only:
        run_all(config, args.runs_dir, args.jobs)
    dirs = [r for r in list_runs(args.runs_dir) if r.parent.name in (MAIN, CONTROL)]
    data = report.collect(dirs)
    ok = [r for r in dirs if load_state(r).status() == "ok"]
    wall, ran = wall_seconds(ok), len(ok)
    for e in data["experiments"]:
        if e["name"] == MAIN:
            e["columns"] = {NAMES.get(k, k): v for k, v in e["columns"].items()}
        elif e["name"] == CONTROL:   # the placeholder generation 0 is no teacher
            e["columns"] = {k: {**v, "vs_teacher": None} for k, v in e["columns"].items() if k != "Teacher"}
    data["teacher_fit"] = teacher_fit(args.runs_dir)
    data["pilot_fit"] = teacher_fit(args.runs_dir, PILOT)
    data["claims"] = claims(data)
    data["wall_s"] = round(wall, 1)
    write(args.out, data, wall, ran, args.jobs, args.epochs, time.time() - started)


if __name__ == "__main__":
    main()
