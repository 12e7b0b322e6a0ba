"""Cancel, resume and remove runs, here or on a host.

Each verb has one implementation, `*_here`, run on the machine that holds the run directory:
directly for a local run, through `python -m ban_tui.remote.control VERB RUNS_DIR REF` over ssh
for a host (one round trip, shlex-quoted words as everywhere in ban_tui.remote), so "running",
"finished" and "queued" mean the same on both ends. On a Slurm host (ban_tui.slurm) a run in a
job is cancelled with `scancel`, resumed by a new job, and a pending job leaves the queue on `rm`.

`rm` removes a finished, failed, cancelled (or dead) run and refuses one with a live engine. A
queued run (a run directory with a `queued` marker, started later by the host's scheduler) has no
engine yet: removing its directory takes it out of the queue. The directory is first renamed
into a temp directory beside it, so no reader ever sees half a run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from engine.runs import find_run, load_state, pid_alive
from engine.spec import Host
from ban_tui import launch, slurm
from ban_tui.remote.operations import RemoteLaunch, find_remote_run, remote_runs_dir
from ban_tui.remote.transport import rpath, run_checked, words

QUEUED = "queued"     # marker file of a run waiting for a slot (the host's scheduler starts it)
ENDED_EXIT_WAIT = 15.0   # seconds an engine that wrote run_end gets to exit before rm calls it running


class ControlError(Exception):
    """The verb cannot be done; the message says why, in one line."""


def name_of(root: Path) -> str:
    return f"{root.parent.name}/{root.name}"


# ---- on the machine that holds the run ----------------------------------------------------

def slurm_job(root: Path) -> tuple[str | None, str]:
    """(job id, squeue state) when the run belongs to a Slurm job still in the queue, else (id or
    None, "")."""
    if slurm.job_of(root) is None or not shutil.which("squeue"):
        return slurm.job_of(root), ""
    try:
        return slurm.job_active(root)
    except (OSError, RuntimeError) as exc:
        raise ControlError(f"{name_of(root)}: cannot ask Slurm about its job: {exc}") from None


def wait_until(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def cancel_here(root: Path, wait: bool = True, timeout: float = 120.0) -> str:
    """SIGTERM the run's engine (or scancel its Slurm job); with wait, until it has stopped."""
    job, state = slurm_job(root)
    if state:
        slurm.scancel(job)
        said = f"cancelled Slurm job {job} of {name_of(root)} (it was {state.lower()})"
        stopped = lambda: not slurm_job(root)[1]   # noqa: E731
    else:
        try:
            said = launch.cancel(root)
        except launch.LaunchError as exc:
            raise ControlError(str(exc)) from None
        stopped = lambda: launch.running_pid(root) is None   # noqa: E731
    if not wait:
        return said
    if not wait_until(stopped, timeout):
        raise ControlError(f"{said}, but it did not stop within {timeout:g} s")
    return f"{said}; {name_of(root)}: {load_state(root).status()}"


def resume_here(root: Path, wait: float = 60.0) -> launch.LaunchedRun:
    """Start the engine on the run again; return once it has written its run_start (so that a
    follow started after this sees a running run, not the old run_end) or has died."""
    if slurm_job(root)[1]:
        raise ControlError(f"{name_of(root)} is in Slurm job {slurm.job_of(root)}; nothing to resume")
    before = load_state(root).n_events
    try:
        run = launch.resume_local(root)
    except launch.LaunchError as exc:
        raise ControlError(str(exc)) from None
    wait_until(lambda: load_state(root).n_events > before or not pid_alive(run.pid, run.pid_start), wait)
    return run


def rm_here(root: Path) -> str:
    """Remove a run directory that has no live engine (a pending Slurm job is cancelled first)."""
    root = Path(root)
    name = name_of(root)
    job, state = slurm_job(root)
    if state and state != "PENDING":
        raise ControlError(f"{name} is in Slurm job {job} ({state.lower()}); cancel it first (ban cancel)")
    if load_state(root).end is not None:   # an engine that wrote its run_end may still be exiting
        wait_until(lambda: launch.running_pid(root) is None, ENDED_EXIT_WAIT)
    if (pid := launch.running_pid(root)) is not None:
        raise ControlError(f"{name} is running (pid {pid}); cancel it first (ban cancel)")
    if state == "PENDING":
        slurm.scancel(job)
        what = f"removed {name} (its pending Slurm job {job} left the queue)"
    elif (root / QUEUED).exists():
        what = f"removed {name} from the queue"
    else:
        what = f"removed {name} ({load_state(root).status()})"
    trash = Path(tempfile.mkdtemp(prefix=f".rm-{root.name}-", dir=root.parent))
    root.rename(trash / root.name)   # gone from every listing at once (runs are <exp>/<id>/)
    shutil.rmtree(trash, ignore_errors=True)
    try:
        root.parent.rmdir()          # the experiment's last run: its directory goes too
    except OSError:
        pass
    return what


def main(argv: list[str] | None = None) -> int:
    """`python -m ban_tui.remote.control {cancel,resume,rm} RUNS_DIR REF`: the host side of
    `ban cancel/resume/rm --host`; one tagged line of JSON on stdout, errors as one line."""
    p = argparse.ArgumentParser(prog="python -m ban_tui.remote.control")
    p.add_argument("verb", choices=("cancel", "resume", "rm"))
    p.add_argument("runs_dir")
    p.add_argument("ref")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    try:
        ref = str(slurm.here(args.ref)) if args.ref.startswith("~") else args.ref   # a run dir as a host path
        root = find_run(slurm.here(args.runs_dir), ref)
        if args.verb == "cancel":
            answer = {"message": cancel_here(root, not args.no_wait, args.timeout), "run_dir": str(root)}
        elif args.verb == "rm":
            answer = {"message": rm_here(root), "run_dir": str(root)}
        else:
            run = resume_here(root)
            answer = {"message": f"resumed {run.name} (pid {run.pid})", "run_dir": str(run.run_dir),
                      "pid": run.pid, "experiment": run.experiment, "run_id": run.run_id}
    except (ControlError, LookupError, RuntimeError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(slurm.OUTPUT_TAG + json.dumps(answer))
    return 0


# ---- from here, on a host -----------------------------------------------------------------

def control(host: Host, verb: str, ref: str, wait: bool = True, timeout: float = 120.0) -> dict:
    """Run a verb on the host; its answer ({message, run_dir[, pid]}), RemoteError when refused."""
    flags = (["--no-wait"] if not wait else []) + ["--timeout", f"{timeout:g}"]
    command = (f"{rpath(host.python)} -m ban_tui.remote.control {words(verb)} {rpath(remote_runs_dir(host))} "
               f"{words(ref, *flags)}")
    out = run_checked(host, command, f"{verb} {ref}", timeout=timeout + 60)
    return slurm.tagged(out, host, f"{verb} {ref}")


def resume(host: Host, ref: str) -> RemoteLaunch:
    """Resume a run on the host: a new engine there, or a new job on a Slurm host."""
    if host.slurm is not None:
        return slurm.resubmit(host, find_remote_run(host, ref))
    a = control(host, "resume", ref)
    return RemoteLaunch(host.name, a["experiment"], a["run_id"], 0, a["run_dir"], a["pid"])


if __name__ == "__main__":
    sys.exit(main())
