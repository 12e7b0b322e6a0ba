"""Start, resume and cancel engine processes on this machine.

A launched engine never belongs to the launcher: it gets its own session (so a Ctrl-C in the
terminal or the launcher exiting does not reach it), stdin from /dev/null and its stdout/stderr
in the run directory's log files. The launcher returns at once; views follow events.jsonl.
Every command is an argv list: no shell anywhere.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from engine import scheduler, spec
from engine.runs import (RunPaths, RunState, load_state, new_run_id, pid_alive, read_pid_file,
                         run_dir)
from ban_tui.errors import BackendError


class LaunchError(BackendError):
    """A run cannot be started, resumed or cancelled; the message says why, in one line."""


@dataclass
class Launch:
    """A chain started, queued or submitted: what every backend's submit and resume return
    (ban_tui.backends), here or on a host."""
    experiment: str
    run_id: str
    run_dir: Path | str            # a Path here; on a host, the path as the host's shell says it
    pid: int | None                # None while it waits in the queue (or for its Slurm job)
    pid_start: int | None = None   # the kernel's start time of pid, to tell a recycled pid apart
    queued: int | None = None      # its position in the queue when no slot was free
    host: str | None = None        # the [hosts] table it runs on; None: this machine
    job: str | None = None         # the Slurm job that runs it
    seed: int | None = None

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.run_id}"

    @property
    def how(self) -> str:
        """"pid 123", "queued #2" for a run that waits for a slot, or "Slurm job 17"."""
        if self.job is not None:
            return f"Slurm job {self.job}"
        return f"pid {self.pid}" if self.pid is not None else f"queued #{self.queued}"

    @property
    def where(self) -> str:
        """Its run directory, as `host:path` for a run on a host."""
        return f"{self.host}:{self.run_dir}" if self.host is not None else str(self.run_dir)


def python_m(python: str, gpus: int) -> list[str]:
    """`python` or, for more than one GPU, `python -m torch.distributed.run` (torchrun): what
    precedes `-m engine ...`. `--standalone`: a rendezvous of its own on a free port, so that two
    DDP runs on one machine do not collide on torchrun's fixed default port; multi-node runs use
    torchrun's rendezvous options directly (docs/scale-out.md)."""
    if gpus <= 1:
        return [python]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus)]


def engine_command(config_path, experiment: str, seed: int, runs_dir, run_id: str, device=None,
                   gpus: int = 1, python: str = sys.executable) -> list[str]:
    """The argv of `python -m engine run ...`."""
    argv = python_m(python, gpus) + ["-m", "engine", "run", str(config_path), "--experiment", experiment, "--seed", str(seed),
                   "--runs-dir", str(runs_dir), "--run-id", run_id]
    return argv + (["--device", device] if device else [])


def resume_command(run_dir, gpus: int = 1, python: str = sys.executable) -> list[str]:
    return python_m(python, gpus) + ["-m", "engine", "resume", str(run_dir)]



def launch_local(config_path, exp: spec.Experiment, seed: int, runs_dir, device=None,
                 python=None, host: spec.Host | None = None) -> Launch:
    """Queue `python -m engine run` for one (experiment, seed) in runs_dir (engine.scheduler):
    it starts at once on a free slot (`pid` set), else waits for one (`queued` set). Returns at
    once either way. The run directory holds the resolved experiment from the start, so editing
    the config afterwards does not change a queued run. `host`: the `[hosts.local]` table, whose
    `gpus`/`slots` become this runs directory's slots (without one: this machine's GPUs, else one)."""
    runs_dir = Path(runs_dir).resolve()
    run_id = new_run_id(seed)
    root = run_dir(runs_dir, exp.name, run_id)
    argv = engine_command(RunPaths(root).snapshot, exp.name, seed, runs_dir, run_id, device,
                          exp.gpus, python or sys.executable)
    scheduler.configure(runs_dir, host.gpus if host else None, host.slots if host else None)
    got = scheduler.submit(root, spec.dumps_experiment(replace(exp, host=None)), argv, exp.gpus)
    return Launch(exp.name, run_id, root, got.get("pid"), got.get("pid_start"), got.get("position"), seed=seed)


def engine_pids(root: Path, state: RunState) -> list[tuple[int, int | None]]:
    """Candidate (pid, start time) of a run's engine: its pid file first (written at every
    start and resume), then the pid of its latest run_start event."""
    found = []
    pid, start = read_pid_file(root)
    if pid:
        found.append((pid, start))
    if state.pid:
        found.append((state.pid, state.pid_start))
    slot = scheduler.read_json(root / scheduler.SLOT)   # the pid the scheduler started, before it writes any
    if isinstance(slot, dict) and slot.get("pid"):
        found.append((slot["pid"], slot.get("pid_start")))
    return trusted(found)


def trusted(pids: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    """Without a start time a pid may have been recycled: trust it only if it runs the engine."""
    return [(pid, start) for pid, start in pids if start is not None or _runs_engine(pid)]


def _runs_engine(pid: int, run_names: tuple = ()) -> bool:
    """The process's command line is `... -m engine run|resume ...` and, given run_names (the run
    id, `experiment/run-id`), names the run: `--run-id ID` or the run directory's path."""
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError):
        return False
    if "engine" not in argv or not any(a in ("run", "resume") for a in argv):
        return False
    return not run_names or any(a == n or a.rstrip("/") == n or a.rstrip("/").endswith("/" + n)
                                for a in argv for n in run_names)


def running_pid(run) -> int | None:
    """The pid of a run's engine if it is alive (same start time), else None."""
    root = Path(run)
    state = load_state(root)
    for pid, start in engine_pids(root, state):
        if pid_alive(pid, start):
            return pid
    return None


def resume_local(run, python=None) -> Launch:
    """Start `python -m engine resume RUN_DIR` for a run that is not running nor finished ok."""
    root = Path(run)
    state = load_state(root)
    name = f"{state.experiment}/{state.run_id}"
    if not RunPaths(root).snapshot.exists():
        why = f" ({state.broken_reason})" if state.status() == "broken" else ""
        raise LaunchError(f"{root}: expected a run directory with experiment.toml, found none{why}; "
                          "start it again with `ban run`")
    if (pid := running_pid(root)) is not None:
        raise LaunchError(f"{name} is still running (pid {pid}); nothing to resume")
    if state.end is not None and state.end.get("status") == "ok":
        raise LaunchError(f"{name} already finished ok; nothing to resume")
    try:
        gpus = spec.load(RunPaths(root).snapshot).experiments[state.experiment].gpus
    except (spec.SpecError, KeyError):
        gpus = 1  # the engine reports a broken snapshot itself, in stderr.log and an event
    try:   # on a free slot of its runs directory, like any chain (engine.scheduler)
        got = scheduler.start_now(root, resume_command(root.resolve(), gpus, python or sys.executable), gpus)
    except scheduler.NoFreeSlot as exc:
        raise LaunchError(f"{name}: {exc}") from None
    pid, start = got["pid"], got["pid_start"]
    return Launch(state.experiment or root.parent.name, state.run_id or root.name, root, pid, start)


def terminate(pid: int, pid_start: int | None, run_names: tuple = ()) -> bool:
    """SIGTERM to an engine (and, when it leads its own process group as our launches do, to
    the whole group: torchrun and its workers). False when that process is not alive, or is not
    an engine of the run named by run_names (its id, its directory): never signal a stranger."""
    if not pid_alive(pid, pid_start) or not _runs_engine(pid, run_names):
        return False
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def run_names(root: Path, run_id: str) -> tuple:
    """How an engine's command line names this run: its id (`--run-id ID`) or a path ending in
    `experiment/run-id` (`resume DIR`)."""
    root = Path(root)
    return (run_id or root.name, f"{root.parent.name}/{run_id or root.name}")


def cancel(run) -> str:
    """Ask a run's engine to stop (it finishes the step, checkpoints, writes run_end cancelled).

    `run` is a run directory, a Launch or a RunState (a local run's folded events). Returns
    what was done; raises LaunchError with the reason when there is no live engine to stop."""
    if isinstance(run, Launch):
        if terminate(run.pid, run.pid_start, run_names(run.run_dir, run.run_id)):
            return f"sent SIGTERM to {run.name} (pid {run.pid})"
        run = run.run_dir
    if isinstance(run, RunState):
        state, pids, names = run, trusted([(run.pid, run.pid_start)] if run.pid else []), (run.run_id,)
    else:
        state = load_state(Path(run))
        pids, names = engine_pids(Path(run), state), run_names(Path(run), state.run_id)
    name = f"{state.experiment}/{state.run_id}"
    for pid, start in pids:
        if terminate(pid, start, names):
            return f"sent SIGTERM to {name} (pid {pid})"
    if state.end is not None:
        raise LaunchError(f"{name} already ended {state.end.get('status')}; nothing to cancel")
    raise LaunchError(f"{name}: no live engine process (status {state.status()}); nothing to cancel")
