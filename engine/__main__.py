"""The engine process: `python -m engine run CONFIG --experiment NAME [--seed S] [--runs-dir DIR]
[--run-id ID] [--device D]` and `python -m engine resume RUN_DIR [--device D]`.

`python -m engine schedule RUNS_DIR` is the queue's scheduler (engine/scheduler.py, no torch).
`python -m engine check CONFIG` builds a config's reference models and reads its user data sets
(engine/check.py; `ban validate` and `ban run` call it).

`run` makes `<runs_dir>/<experiment>/<run_id>/` with the resolved snapshot (experiment.toml, the
seed recorded), the pid file and events.jsonl, then trains the chain. `resume` continues a run
directory from its snapshot, checkpoints and events (`seq` continues). The launcher redirects
stdout/stderr; this process writes only what a view reads: events, checkpoints, results.json.

One writer per run: the engine locks the run directory (engine/lock.py) before it reads or
writes anything else there; a second engine or resume of the same run exits 2 with "run ... is
already being written by pid N (host H)" and touches nothing. With the lock held it removes the
`.tmp` leftovers of writes a killed engine never finished.

Signals: SIGTERM/SIGINT finish the current step, write checkpoints/last.pt, end the run with
`run_end cancelled` and exit 0. SIGUSR2 (the warning Slurm sends before a job's time limit, as
submitit asks for it) does the same but ends the run with `run_end preempted`: a run stopped to be
requeued, which `resume` continues (ban_tui.slurm requeues the job). Errors: an `error` event, `run_end failed`, ONE line on stderr
(the traceback too with BAN_DEBUG=1), exit 2 for a config error (spec, model, data, checkpoint
shapes) and 1 for a failed run. Under torchrun (RANK/WORLD_SIZE set) rank 0 alone writes.
"""
from __future__ import annotations

import argparse
import difflib
import os
import platform
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path

from engine import lock, runs, spec
from engine.runs import HEARTBEAT_SECONDS, RunPaths

EXIT_FAILED, EXIT_CONFIG = 1, 2


class AlreadyRunning(Exception):
    """Another engine process owns the run directory: say so and touch nothing in it."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m engine", description="Born-Again Networks training engine")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="start a run of one experiment of a config file")
    r.add_argument("config")
    r.add_argument("--experiment", required=True)
    r.add_argument("--seed", type=int)
    r.add_argument("--runs-dir")
    r.add_argument("--run-id")
    r.add_argument("--device")
    s = sub.add_parser("resume", help="continue a run directory")
    s.add_argument("run_dir")
    s.add_argument("--device")
    q = sub.add_parser("schedule", help="start the queued runs of a runs directory as slots free")
    q.add_argument("runs_dir")
    c = sub.add_parser("check", help="build a config's reference models and user data sets (engine/check.py)")
    c.add_argument("config")
    return p.parse_args(argv)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, spec.SpecError):
        return "; ".join(str(p) for p in exc.problems)
    if isinstance(exc, OSError) and exc.filename and exc.strerror:   # e.g. a read-only run directory
        return f"{exc.filename}: {exc.strerror}"
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def load_experiment(args):
    """(experiment, seed) from the command line, validated."""
    from engine.errors import ConfigError
    if args.command == "resume":
        root = Path(args.run_dir)
        if not RunPaths(root).snapshot.is_file():
            raise ConfigError(f"{root}: expected a run directory with experiment.toml, found none")
        exps = list(spec.load(RunPaths(root).snapshot).experiments.values())
        if len(exps) != 1:
            raise ConfigError(f"{RunPaths(root).snapshot}: expected one experiment, found {len(exps)}")
        exp, seed = exps[0], exps[0].seeds[0]
    else:
        cfg = spec.load(args.config)
        if args.experiment not in cfg.experiments:
            close = difflib.get_close_matches(args.experiment, list(cfg.experiments), n=1)
            raise ConfigError(f"{args.config}: --experiment: expected one of {', '.join(cfg.experiments)}, found "
                              f"{args.experiment!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        exp = cfg.experiments[args.experiment]
        seed = exp.seeds[0] if args.seed is None else args.seed
        if seed < 0:
            raise ConfigError(f"--seed: expected a non-negative integer, found {seed}")
        exp.seeds = [seed]
    if args.device:
        exp.device = args.device
    return exp, seed


def resolve_device(name: str, local_rank: int, world_size: int):
    """auto: CUDA if there is a GPU, else the CPU. Under DDP each rank takes GPU LOCAL_RANK."""
    import torch
    from engine.errors import ConfigError
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or (world_size > 1 and name.startswith("cuda")):
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: expected auto, cpu, cuda, cuda:N or mps, found {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: expected a CUDA GPU for {name!r}, found none; use device = \"cpu\" or \"auto\"")
    if device.type == "cuda":
        from engine import hardware
        try:
            hardware.check_device_index(device, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: expected Apple MPS for {name!r}, found none; use device = \"cpu\" or \"auto\"")
    return device


def given_dir(args) -> Path | None:
    """The run directory the command line names: resume's, or run's --run-id under --runs-dir."""
    if args.command == "resume":
        return Path(args.run_dir)
    if args.run_id:
        try:
            return runs.run_dir(args.runs_dir or "runs", args.experiment, args.run_id)
        except ValueError:
            return None
    return None


def claim(root: Path) -> lock.RunLock:
    """This process becomes the run's only writer (lock.Locked if another one is), then clears
    what killed writes left behind."""
    held = lock.acquire(root)
    runs.remove_tmp(root)
    return held


def lock_given_dir(args) -> tuple[lock.RunLock | None, int | None]:
    """(lock, None) of the run directory the command line names, taken before torch loads; (None,
    exit status) with one line on stderr when another process holds it; (None, None) when there is
    no such directory yet (or this is not rank 0): the lock is then taken once it is made."""
    early = given_dir(args)
    if int(os.environ.get("RANK", 0)) != 0 or early is None or not early.is_dir():
        return None, None
    try:
        return claim(early), None
    except lock.Locked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, EXIT_CONFIG
    except OSError as exc:
        print(f"error: {early}: cannot lock the run directory: {exc.strerror or exc}", file=sys.stderr)
        return None, EXIT_FAILED


def confirm_slot_claim(args) -> int | None:
    """Started on claimed slots (BAN_CLAIM, engine/scheduler.py): record this process in the
    claim before touching the run, or refuse to run (exit 2, the run untouched) when the claim is
    gone. None: go on."""
    from engine import scheduler
    token = os.environ.pop("BAN_CLAIM", None)
    root = given_dir(args)
    if not token or root is None or int(os.environ.get("RANK", 0)) != 0:
        return None
    try:
        scheduler.confirm_claim(root, token)
    except scheduler.ClaimMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError:
        pass   # the claim cannot be read here (e.g. a read-only runs directory): it holds the slots
    return None


def check_not_running(root: Path) -> None:
    state = runs.load_state(root)
    try:
        pid, start = (int(x) for x in RunPaths(root).pid.read_text().split()[:2])
    except (OSError, ValueError):
        pid, start = state.pid, state.pid_start
    if pid and pid != os.getpid() and runs.pid_alive(pid, start):
        raise AlreadyRunning(f"{root}: still running (pid {pid}); nothing to resume")
    if state.end is not None and state.end.get("status") == "ok":
        raise AlreadyRunning(f"{root}: finished ok; nothing to resume")


class Heartbeat(threading.Thread):
    """A heartbeat event every HEARTBEAT_SECONDS, so views can tell a live run from a dead one."""

    def __init__(self, writer):
        super().__init__(daemon=True)
        self.writer, self.done = writer, threading.Event()

    def run(self):
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                self.writer.emit("heartbeat")
            except OSError:
                pass   # a full disk: the training thread's next write fails and says why

    def stop(self):
        self.done.set()
        if self.is_alive():
            self.join()


def end_run(writer, root: Path, status: str, error: str | None) -> None:
    """The error and run_end events, then results.json, as far as the directory still takes them
    (one made read-only mid-run keeps its open events file writable); never a traceback."""
    from engine import chain
    from engine.events import EventWriter
    try:
        writer = writer or EventWriter(RunPaths(root).events, root.name)
        if error is not None:
            writer.emit("error", message=error)
        writer.emit("run_end", status=status, error=error)
        writer.close()
    except OSError as exc:
        say(f"error: {exc.filename or RunPaths(root).events}: {exc.strerror or exc}; run_end not recorded")
        return
    try:
        chain.write_results(RunPaths(root))
    except OSError:
        pass   # results.json is a summary of the events, which say how the run ended


def versions() -> dict:
    import importlib.metadata
    import torch
    try:
        ban = importlib.metadata.version("ban")
    except importlib.metadata.PackageNotFoundError:
        ban = "unknown"
    out = {"python": platform.python_version(), "torch": torch.__version__, "ban": ban}
    for name in ("torchvision", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def settings(exp, device) -> tuple[dict, dict]:
    """(engine.hardware.resolved, engine.hardware.machine) of this run; a bad BAN_FORCE_CPU_BF16
    is a config error."""
    from engine import hardware
    from engine.errors import ConfigError
    try:
        return hardware.resolved(exp, device), hardware.machine(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolved_comment(exp, device) -> str:
    """The snapshot's closing comment: what this run resolves to on this machine (run_start
    carries the same fields; comments leave the snapshot a valid config of the experiment).
    Empty when the environment is bad: the run then fails in its directory, saying why."""
    from engine import hardware
    try:
        (resolved, machine), threads = settings(exp, device), hardware.intra_op_threads()[0]
    except Exception:   # ConfigError or ValueError: reported by configure_torch / settings next
        return ""
    gens = ", ".join(f"gen {i}: {g['precision']}, channels_last {str(g['channels_last']).lower()}, "
                     f"compile {str(g['compile']).lower()}" for i, g in enumerate(resolved["generations"]))
    gpu = machine.get("gpu") and f"GPU {machine['gpu']} (CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')}); "
    return (f"\n# resolved on this machine (device type {resolved['device_type']}): {gens}\n"
            f"# {gpu or ''}CPU {machine['cpu']}, bf16 {str(machine['cpu_bf16']).lower()}; {threads} threads; "
            f"{' '.join(f'{k} {v}' for k, v in versions().items())}\n")


def catch_signals() -> tuple[threading.Event, threading.Event]:
    """(stop, preempt): SIGTERM/SIGINT set stop; SIGUSR2 sets both (checkpoint, stop to be requeued)."""
    stop, preempt = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if hasattr(signal, "SIGUSR2"):
        signal.signal(signal.SIGUSR2, lambda *_: (preempt.set(), stop.set()))
    return stop, preempt


class Session:
    """What main's pieces share as far as they got: the run directory, its lock, the event writer
    (rank 0 only) and the heartbeat."""

    def __init__(self, root: Path | None, held: lock.RunLock | None):
        self.root, self.held = root, held
        self.writer = self.beat = None

    def own(self, root: Path) -> None:
        """Hold the lock of `root` (made if need be), giving up one taken early on another directory."""
        if self.held is not None and self.held.root == root:
            return
        if self.held is not None:
            self.held.release()
            self.held = None
        root.mkdir(parents=True, exist_ok=True)
        self.held = claim(root)


def open_run_dir(s: Session, args, exp, seed: int, rank: int, comment: str = "") -> RunPaths:
    """The run directory of this command, locked, with its snapshot, pid file and event writer
    (rank 0); every rank learns the run id rank 0 drew."""
    from engine import checkpoint, ddp
    from engine.errors import ConfigError
    from engine.events import EventWriter
    if args.command == "run":
        run_id = ddp.broadcast_object(args.run_id or runs.new_run_id(seed))
        try:
            s.root = runs.run_dir(args.runs_dir or exp.runs_dir, exp.name, run_id)
        except ValueError as exc:
            raise ConfigError(f"--run-id: {exc}") from None
    root, paths = s.root, RunPaths(s.root)
    if rank == 0:
        s.own(root)
        if args.command == "resume":
            check_not_running(root)
        elif runs.load_state(root).n_events:
            raise ConfigError(f"{root}: already holds a run; continue it with `python -m engine resume {root}`")
        root.mkdir(parents=True, exist_ok=True)
        if args.command == "run":
            checkpoint.write_text(paths.snapshot, spec.dumps_experiment(exp) + comment)
        checkpoint.write_text(paths.pid, f"{os.getpid()} {runs.process_start_time(os.getpid())}\n")
        s.writer = EventWriter(paths.events, root.name)
    ddp.barrier()
    return paths


def configure_torch(device, exp) -> tuple:
    """Threads (hardware.set_threads: (count, where it came from)) and the kernels
    (hardware.configure_kernels: determinism, cuDNN autotuning, TF32), as the experiment asks."""
    from engine import hardware
    from engine.errors import ConfigError
    try:
        threads = hardware.set_threads()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return threads, hardware.configure_kernels(device, bool(exp.deterministic), bool(exp.allow_tf32))


def announce(ctx, args, threads: tuple, kernels: dict, resolved: dict, machine: dict) -> None:
    """The run_start event (what ran where: resolved precision, channels-last and compile per
    generation, the kernels, the device's model, threads, versions; the report's group hash),
    and a warning when the experiment asks for more GPUs than this process trains on."""
    from engine.spec.schema import numbers_key
    exp = ctx.exp
    table = runs.snapshot_experiment(ctx.paths.root)
    group = runs.group_hash(table, [numbers_key(resolved)]) if table is not None else None
    ctx.emit("run_start", experiment=exp.name, config_hash=exp.config_hash(resolved), group_hash=group,
             host=socket.gethostname(),
             pid=os.getpid(), pid_start=runs.process_start_time(os.getpid()), versions=versions(),
             device=str(ctx.device), seed=ctx.seed, resumed=args.command == "resume",
             world_size=ctx.world_size, slot=os.environ.get("BAN_SLOT"),
             cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
             threads=threads[0], threads_from=threads[1], kernels=kernels, resolved=resolved, machine=machine)
    if exp.gpus > 1 and ctx.world_size == 1:
        ctx.log(f"the experiment asks for {exp.gpus} GPUs but runs as one process "
                "(start it with `ban run` or torchrun for DDP)", "warning")


def train(s: Session, args, stop: threading.Event) -> None:
    """Load the experiment, open its run directory, set torch up and train the chain."""
    from engine import chain, ddp
    from engine.context import Context
    rank, world_size, local_rank = ddp.from_env()
    exp, seed = load_experiment(args)
    device = resolve_device(exp.device, local_rank, world_size)
    ddp.init(device)
    paths = open_run_dir(s, args, exp, seed, rank, resolved_comment(exp, device))
    threads, kernels = configure_torch(device, exp)
    resolved, machine = settings(exp, device)
    ctx = Context(exp=exp, seed=seed, paths=paths, device=device, events=s.writer, stop=stop,
                  rank=rank, world_size=world_size)
    announce(ctx, args, threads, kernels, resolved, machine)
    if s.writer is not None:
        s.beat = Heartbeat(s.writer)
        s.beat.start()
    chain.run_chain(ctx)


def say(line: str) -> None:
    """One line on stderr, never an exception: a full disk under stderr.log must not hide the
    reason already written to the events, nor stop the engine ending its run."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def failure(exc: BaseException, rank: int) -> tuple[str, int, str | None]:
    """(the error line, exit status, the line for stderr: None where another rank says it) of a
    failed run. main writes the events first (end_run), stderr second (`say`)."""
    from engine import checkpoint
    from engine.errors import ConfigError, RunError
    config = isinstance(exc, (spec.SpecError, ConfigError))
    error = one_line(exc)
    if not config and not isinstance(exc, (RunError, KeyboardInterrupt, checkpoint.FileError)):
        error = f"{type(exc).__name__}: {error}"
    line = None
    if rank == 0 or not (config or isinstance(exc, RunError)):
        line = f"error: {error}" if rank == 0 else f"rank {rank}: error: {error}"
    if os.environ.get("BAN_DEBUG") == "1":
        line = (line or "") + "\n" + traceback.format_exc().rstrip()
    return error, EXIT_CONFIG if config else EXIT_FAILED, line


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "schedule":   # torch-free: the queue's scheduler (engine/scheduler.py)
        from engine import scheduler
        return scheduler.serve(Path(args.runs_dir))
    if args.command == "check":      # what `ban validate` cannot check without torch (engine/check.py)
        from engine import check
        return check.main(args.config)
    stop, preempt = catch_signals()   # first thing: a signal during imports must not kill us
    code = confirm_slot_claim(args)
    if code is not None:
        return code
    held, code = lock_given_dir(args)
    if code is not None:
        return code

    from engine import chain, ddp  # noqa: F401 - torch and the trainers load before the run begins
    from engine.errors import Cancelled
    rank = ddp.from_env()[0]
    s = Session(given_dir(args), held)   # a launcher made the directory: report errors there
    status, error, code, last_words = "ok", None, 0, None
    try:
        train(s, args, stop)
    except (AlreadyRunning, lock.Locked) as exc:
        say(f"error: {exc}")
        return EXIT_CONFIG
    except Cancelled:
        status = "preempted" if preempt.is_set() else "cancelled"
    except BaseException as exc:   # noqa: BLE001 - every failure ends the run with one clear line
        status = "failed"
        error, code, last_words = failure(exc, rank)
    finally:
        if s.beat is not None:
            s.beat.stop()
    try:   # the events first (what every view reads), stderr second, each on its own
        if rank == 0 and (s.writer is not None or (s.held is not None and s.root.is_dir())):
            end_run(s.writer, s.root, status, error)
    finally:
        if last_words:
            say(last_words)
    ddp.shutdown()
    return code

if __name__ == "__main__":
    sys.exit(main())
