"""Inside a Slurm job: the engine on one run directory (`ChainJob`, pickled by submitit), its
output in the run's log files, and the requeue before the time limit. Slurm sends SIGUSR2
`signal_delay_s` ahead (submitit's `--signal`); the engine finishes the step, writes last.pt and
ends the run `preempted`; the job then requeues itself (`scontrol requeue`) and, when it runs
again, `ChainJob` resumes the run directory from last.pt. Imports torch only when the job runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.runs import RunPaths, load_state
from engine.spec import load

@dataclass
class ChainJob:
    """What one Slurm job runs: the engine, in this process, on one run directory. A first start
    runs the snapshot; a requeued or resubmitted job resumes from last.pt."""
    run_dir: str
    experiment: str
    seed: int | None      # None: the snapshot's
    device: str | None = None

    def argv(self) -> list[str]:
        root = Path(self.run_dir)
        if load_state(root).n_events:
            argv = ["resume", str(root)]
        else:
            if self.seed is None:
                self.seed = load(RunPaths(root).snapshot).experiments[self.experiment].seeds[0]
            argv = ["run", str(RunPaths(root).snapshot), "--experiment", self.experiment, "--seed", str(self.seed),
                    "--runs-dir", str(root.parent.parent), "--run-id", root.name]
        return argv + (["--device", self.device] if self.device else [])

    def __call__(self) -> str:
        root = Path(self.run_dir)
        state = load_state(root)
        if state.end is not None and state.end.get("status") == "ok":
            return "ok"   # requeued after it ended (a node failure, say): nothing to do
        from engine.__main__ import main   # torch: in the job only
        with redirected(RunPaths(root)):
            code = main(self.argv())
        status = (load_state(root).end or {}).get("status")
        if status == "preempted":
            requeue_self()
        if status == "failed" or code not in (0, None):
            raise RuntimeError(f"{root}: the run ended {status} (engine exit {code}); see its stderr.log")
        return status or "unknown"


class redirected:
    """The engine's stdout/stderr into the run directory's log files (appending), as for any
    launch; submitit's own log goes back to its files afterwards."""

    def __init__(self, paths: RunPaths):
        self.paths = paths

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        for fd, path in ((1, self.paths.stdout), (2, self.paths.stderr)):
            with open(path, "ab") as f:
                os.dup2(f.fileno(), fd)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


def this_job_id() -> str:
    """The id `scontrol`/`squeue` know this job by (`A_i` for a task of an array)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def requeue_self() -> None:
    """Put this job back in the queue and leave without a result (as submitit does itself on a
    time-out): the next start of the job resumes the run."""
    subprocess.run(["scontrol", "requeue", this_job_id()], check=True, timeout=60, stdin=subprocess.DEVNULL)
    raise SystemExit(-1)
