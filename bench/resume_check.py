"""(e) and (f) of bench/device_check.sh: resumes through the engine process, on a GPU.

    python bench/resume_check.py cpu-to-cuda --runs-dir /tmp/x [--device cuda]
    python bench/resume_check.py deterministic --runs-dir /tmp/x [--device cuda]

The chain: cnn-small on scikit-learn's digits, a ce teacher then a dkpp student (DKPP's
permutations drawn on the CPU, copied to the device), bf16 autocast on CUDA, Ens*1.
cpu-to-cuda: the chain starts on the CPU (contiguous model, momentum saved contiguous), is
  SIGKILLed after the teacher's first epoch and resumed with --device (CUDA: channels-last and
  fused SGD, which needs the momentum re-laid to the params' strides); it must end ok.
deterministic: the chain with deterministic = true on --device, once whole and once SIGKILLed after
  the student's first epoch and resumed: every epoch, gen_end and ensemble number must be equal
  bit for bit (timings aside). Prints one line per check, exit 1 when one fails.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CONFIG = """
[[experiment]]
name = "resume"
dataset = {{ name = "digits" }}
model = "cnn-small"
epochs = {epochs}
batch_size = 64
optimizer = {{ lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }}
generations = 1
objective = "dkpp"
ensembles = [1]
device = "{device}"
deterministic = {deterministic}
seeds = [0]
"""
TIMING = ("v", "seq", "ts", "run", "kind", "seconds", "samples_per_s")


def events(root: Path) -> list[dict]:
    path = root / "events.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def engine(cwd: Path, *args) -> subprocess.Popen:
    log = open(cwd / f"engine-{time.monotonic_ns()}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)


def run(cwd: Path, run_id: str, device: str, deterministic: bool, epochs: int) -> tuple[subprocess.Popen, Path]:
    (cwd / "c.toml").write_text(CONFIG.format(epochs=epochs, device=device, deterministic=str(deterministic).lower()))
    proc = engine(cwd, "run", "c.toml", "--experiment", "resume", "--runs-dir", "runs", "--run-id", run_id)
    return proc, cwd / "runs" / "resume" / run_id


def kill_after(root: Path, proc, gen: int, epoch: int, timeout: float = 300) -> None:
    """SIGKILL the engine once generation `gen` has reported epoch `epoch`."""
    deadline = time.monotonic() + timeout
    while not any(e["kind"] == "epoch" and e["gen"] == gen and e["epoch"] >= epoch for e in events(root)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{root}: the engine ended (or {timeout} s passed) before gen {gen} epoch {epoch}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def resume(cwd: Path, root: Path, device: str) -> list[dict]:
    rc = engine(cwd, "resume", root, "--device", device).wait(timeout=600)
    evs = events(root)
    end = evs[-1] if evs else {}
    if rc != 0 or end.get("status") != "ok":
        logs = sorted(cwd.glob("engine-*.log"))
        print(logs[-1].read_text()[-3000:] if logs else "", file=sys.stderr)
        raise SystemExit(f"{root}: resume on {device} ended with exit {rc}, {end.get('status')}: {end.get('error')}")
    return evs


def numbers(evs: list[dict]) -> dict:
    out = {}
    for e in evs:
        if e["kind"] in ("epoch", "gen_end", "ensemble"):
            out[(e["kind"], e.get("gen", e.get("k")), e.get("epoch"))] = {k: v for k, v in e.items() if k not in TIMING}
    return out


def cpu_to_cuda(cwd: Path, device: str, epochs: int) -> None:
    proc, root = run(cwd, "cpu-to-cuda", "cpu", False, epochs)
    kill_after(root, proc, 0, 1)
    evs = resume(cwd, root, device)
    starts = [(e["device"], e["resumed"]) for e in evs if e["kind"] == "run_start"]
    gens = [round(e["final"]["test_err"], 4) for e in evs if e["kind"] == "gen_end"]
    print(f"cpu-to-cuda: ok; run_start (device, resumed) {starts}; test_err per generation {gens}")


def deterministic(cwd: Path, device: str, epochs: int) -> None:
    (cwd / "ref").mkdir(exist_ok=True)
    (cwd / "cut").mkdir(exist_ok=True)
    proc, ref_root = run(cwd / "ref", "ref", device, True, epochs)
    if proc.wait(timeout=600) != 0:
        raise SystemExit(f"{ref_root}: the uninterrupted deterministic run failed: {events(ref_root)[-1:]}")
    proc, root = run(cwd / "cut", "cut", device, True, epochs)
    kill_after(root, proc, 1, 1)
    evs = resume(cwd / "cut", root, device)
    ref, cut = numbers(events(ref_root)), numbers(evs)
    differ = [k for k in ref if ref[k] != cut.get(k)] + [k for k in cut if k not in ref]
    kernels = [e["kernels"] for e in evs if e["kind"] == "run_start"][-1]
    print(f"deterministic resume on {device}: {len(ref)} records, {len(differ)} differ {differ[:5]}; kernels {kernels}")
    for k in differ[:3]:
        print(f"  {k}: uninterrupted {ref[k]}\n  {' ' * len(str(k))}  resumed       {cut.get(k)}")
    if differ:
        raise SystemExit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=("cpu-to-cuda", "deterministic"))
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    cwd = Path(args.runs_dir) / args.check
    shutil.rmtree(cwd, ignore_errors=True)   # a rerun starts over
    cwd.mkdir(parents=True)
    (cpu_to_cuda if args.check == "cpu-to-cuda" else deterministic)(cwd, args.device, args.epochs)


if __name__ == "__main__":
    main()
