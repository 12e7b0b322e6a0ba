"""Benchmark of ban-tui (not a test): time to the first frame, `ban models`, and the CPU the app
uses while it follows 20 runs that each write 200 events a second for ~10 s.

    .venv/bin/python bench/tui_first_frame_and_follow.py [--runs 20] [--rate 200] [--seconds 10]
        [--startup-only] [--compare DIR]

First frame: `python -m ban_tui.app` is started in a real terminal (tmux) and the screen is read
until the tabs and the experiment list are drawn; wall time from the spawn (Python start-up and
imports included) and the CPU time the app had used by then (its /proc utime + stime: on a
shared machine the wall time mostly measures the others' load). The whole experiments tab is
measured the same way, until the chain form (mounted after the first frame) is drawn too.
Without tmux, a headless app measures from before its import to its first refresh. Both
checkouts' bytecode caches are written first (see compile_checkout).

`ban models`: `python -m ban_tui.cli models` to its exit, wall and CPU (rusage of the child).

--compare DIR measures a second checkout as well, start-up and following (e.g. the previous
commit: `git worktree add --detach /tmp/prev HEAD~1`), each measure alternating between the two with
PYTHONPATH set to each checkout, and prints the ratios. The Python is this one (same venv).

Following: the app runs headless in its own process (runs tab shown, or with --monitor a run
monitor open as well), the writers are separate processes using engine.events.EventWriter; the
app's CPU time (all its threads) over the writing window is reported with the events it folded.
The machine may be shared: the load average is printed beside the numbers.
"""
from __future__ import annotations

import argparse
import compileall
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = '[[experiment]]\nname = "bench"\ndataset = { name = "digits" }\nepochs = 2\ngenerations = 1\n'


def checkout_env(root: Path) -> dict:
    """The environment that runs `root`'s code with this Python (PYTHONPATH before the editable install)."""
    return {**os.environ, "PYTHONPATH": str(root)}


def proc_cpu(pid: int) -> float:
    """utime + stime of a process and its children still running (tmux may start a shell first)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


SESSIONS = itertools.count()


FIRST_FRAME = ("Experiments", "bench")             # the tabs and the experiment list
WHOLE_TAB = FIRST_FRAME + ("data set", "epochs")   # and the chain form, mounted after the first frame


def first_frame_tmux(work: Path, root: Path = ROOT, until: tuple[str, ...] = FIRST_FRAME) -> tuple[float, float] | None:
    """(wall, CPU) seconds from the spawn until every text of `until` is on screen; None without tmux."""
    if shutil.which("tmux") is None:
        return None
    argv = [sys.executable, "-m", "ban_tui.app"]
    sock = f"ban-bench-{os.getpid()}-{next(SESSIONS)}"   # a fresh server each time: the last may still be exiting
    tmux = ["tmux", "-L", sock]
    env = checkout_env(root)
    t0 = time.perf_counter()
    subprocess.run(tmux + ["new-session", "-d", "-s", "b", "-x", "120", "-y", "40", "-c", str(work),
                           "-e", f"PYTHONPATH={root}"] + argv + ["experiments.toml", "--runs-dir", "runs"],
                   check=True, env=env)
    try:
        pane = int(subprocess.run(tmux + ["display", "-p", "-t", "b", "#{pane_pid}"], capture_output=True,
                                  text=True).stdout.strip() or 0)
        while time.perf_counter() - t0 < 60:
            screen = subprocess.run(tmux + ["capture-pane", "-p", "-t", "b"], capture_output=True, text=True).stdout
            if all(text in screen for text in until):
                return time.perf_counter() - t0, proc_cpu(pane) if pane else float("nan")
            time.sleep(0.01)
        return None
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)


def first_frame_headless(work: Path, root: Path = ROOT) -> tuple[float, float]:
    code = ("import time; t0 = time.perf_counter()\n"
            "from ban_tui.app import BanApp\n"
            "app = BanApp('experiments.toml', 'runs')\n"
            "async def pilot(p):\n"
            "    await p.pause()\n"
            "    print(time.perf_counter() - t0, time.process_time())\n"
            "    p.app.exit()\n"
            "app.run(headless=True, auto_pilot=pilot)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, check=True,
                         env=checkout_env(root))
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def ban_models(work: Path, root: Path = ROOT) -> tuple[float, float]:
    """(wall, CPU) seconds of `ban models` (the listing of the whole registry) to its exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "ban_tui.cli", "models"], cwd=work, env=checkout_env(root),
                         stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, f"ban models exited {p.returncode}"
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def compile_checkout(root: Path) -> None:
    """Write the bytecode caches of a checkout's packages, as a user's Python does on its first
    start; the machines here set PYTHONDONTWRITEBYTECODE, so without them every start compiles
    ban_tui and engine from source (about 0.1 s) and a checkout that happens to have caches wins."""
    for package in ("ban_tui", "engine"):
        compileall.compile_dir(root / package, quiet=1)


def startup(work: Path, roots: dict[str, Path], repeat: int = 5) -> None:
    """First frame and `ban models` of each checkout, alternating, best of `repeat`; ratios."""
    for root in roots.values():
        compile_checkout(root)
    if shutil.which("tmux"):
        measures = [("first frame (tmux, spawn to the tabs and experiment list on screen)", first_frame_tmux),
                    ("whole experiments tab (tmux, spawn to the chain form on screen too)",
                     lambda work, root: first_frame_tmux(work, root, WHOLE_TAB))]
    else:
        measures = [("first frame (headless, import to first refresh)", first_frame_headless)]
    for what, measure in measures + [("ban models", ban_models)]:
        got: dict[str, list] = {name: [] for name in roots}
        for _ in range(repeat):
            for name, root in roots.items():
                got[name].append(measure(work, root))
        best = {}
        for name, values in got.items():
            best[name] = (min(w for w, _ in values), min(c for _, c in values))
            print(f"{what} [{name}]: best {best[name][0]:.2f} s wall, {best[name][1]:.2f} s CPU; runs: "
                  + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in values))
        if len(roots) == 2:
            (a, (wa, ca)), (b, (wb, cb)) = best.items()
            print(f"{what}: {a} / {b} = {wa / wb:.2f}x wall, {ca / cb:.2f}x CPU")


WRITER = """
import sys, time
from engine.events import EventWriter
path, run_id, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
w = EventWriter(path, run_id)
w.emit("run_start", experiment="bench", seed=0, device="cpu")
w.emit("gen_start", gen=0, role="teacher", objective="ce", model="cnn-small", epochs=10**6)
t0, n = time.monotonic(), 0
while time.monotonic() - t0 < seconds:
    n += 1
    if n % rate == 0:
        w.emit("heartbeat")
    else:
        w.emit("epoch", gen=0, epoch=n, epochs=10**6, train_loss=1.0 / n, train_err=0.5, test_loss=1.1 / n,
               test_err=0.4, lr=0.1, seconds=0.005, diagnostics={"grad_correct": 0.1, "grad_dark": 0.2})
    time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
w.close()
print(n)
"""


def follow_app(work: str, runs_dir: str, seconds: float, monitor: bool) -> None:
    """The app process: print 'ready', then after `seconds` the CPU it used and the events it folded."""
    from ban_tui.app import BanApp   # of the checkout on PYTHONPATH (follow() sets it)
    app = BanApp(Path(work) / "experiments.toml", Path(runs_dir), initial="runs")
    result = {}

    async def pilot(p):
        await p.pause(0.5)
        print("ready", flush=True)
        sys.stdin.readline()                      # the writers started
        cpu0, t0 = time.process_time(), time.perf_counter()
        opened = False
        while time.perf_counter() - t0 < seconds:
            if monitor and not opened and app.watcher.models:
                app.open_run(str(sorted(app.watcher.models)[0]))
                opened = True
            await p.pause(0.25)
        result["cpu_s"] = time.process_time() - cpu0
        result["wall_s"] = time.perf_counter() - t0
        with app.watcher.lock:
            result["runs"] = len(app.watcher.models)
            result["events"] = sum(m.state.n_events for m in app.watcher.models.values())
        p.app.exit()

    app.run(headless=True, auto_pilot=pilot, size=(120, 40))
    print(json.dumps(result), flush=True)


def follow(work: Path, runs: int, rate: int, seconds: float, monitor: bool, root: Path = ROOT) -> dict:
    runs_dir = work / f"runs-{'monitor' if monitor else 'table'}-{next(SESSIONS)}"
    runs_dir.mkdir()
    app = subprocess.Popen([sys.executable, __file__, "--app", str(work), str(runs_dir), str(seconds + 2),
                            str(int(monitor))], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=checkout_env(root))
    assert app.stdout.readline().strip() == "ready"
    writers = []
    for i in range(runs):
        d = runs_dir / "bench" / f"20260101-000000-s{i}-r{i:03d}"
        d.mkdir(parents=True)
        writers.append(subprocess.Popen([sys.executable, "-c", WRITER, str(d / "events.jsonl"), d.name,
                                         str(rate), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True))
    app.stdin.write("go\n")
    app.stdin.flush()
    written = sum(int(w.communicate()[0]) + 2 for w in writers)
    out = app.communicate(timeout=120)[0].strip().splitlines()
    result = json.loads(out[-1])
    result["written"] = written
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--app":
        follow_app(sys.argv[2], sys.argv[3], float(sys.argv[4]), bool(int(sys.argv[5])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rate", type=int, default=200, help="events per second per run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--startup-only", action="store_true", help="only the first frame and `ban models`")
    parser.add_argument("--compare", type=Path, help="another checkout to measure side by side (e.g. the previous commit)")
    args = parser.parse_args()
    roots = {"this": ROOT} | ({"compared": args.compare.resolve()} if args.compare else {})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "experiments.toml").write_text(CONFIG)
        (work / "runs").mkdir()
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"
              + (f"; compared: {args.compare}" if args.compare else ""))
        startup(work, roots)
        if args.startup_only:
            print(f"load average {os.getloadavg()[0]:.1f} at the end")
            return
        for monitor in (False, True):
            share = {}
            for name, root in roots.items():   # the writers run this checkout's engine.events in both
                r = follow(work, args.runs, args.rate, args.seconds, monitor, root)
                view = "runs tab + run monitor" if monitor else "runs tab"
                share[name] = r['cpu_s'] / r['wall_s']
                print(f"following {r['runs']} runs x {args.rate} events/s for {args.seconds:.0f} s ({view}) [{name}]: "
                      f"app CPU {r['cpu_s']:.2f} s over {r['wall_s']:.1f} s wall = {100 * share[name]:.0f}% "
                      f"of one core; events folded {r['events']} of {r['written']} written")
            if len(share) == 2:
                print(f"following ({view}): this / compared = {share['this'] / share['compared']:.2f}x CPU")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
