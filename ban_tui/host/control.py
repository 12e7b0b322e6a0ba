"""Cancel, resume and remove runs on the machine that holds the run directory.

Each verb has one implementation, `*_here`: called directly for a run on this machine
(ban_tui.backends.local), through `python -m ban_tui.host VERB RUNS_DIR REF` over ssh for a
host, so "running", "finished" and "queued" mean the same on both ends. On a Slurm login node
(ban_tui.host.slurm_login) a run in a job is cancelled with `scancel`, and a pending job leaves
the queue on `rm`.

`rm` removes a finished, failed, cancelled (or dead) run and refuses one with a live engine. A
queued run (a run directory with a `queued` marker, started later by the host's scheduler) has no
engine yet: removing its directory takes it out of the queue. The directory is first renamed
into a temp directory beside it, so no reader ever sees half a run.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from engine.runs import load_state, pid_alive
from ban_tui import launch
from ban_tui.errors import BackendError
from ban_tui.host import slurm_login as slurm

QUEUED = "queued"     # marker file of a run waiting for a slot (the host's scheduler starts it)
ENDED_EXIT_WAIT = 15.0   # seconds an engine that wrote run_end gets to exit before rm calls it running


class ControlError(BackendError):
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


def resume_here(root: Path, wait: float = 60.0) -> launch.Launch:
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
