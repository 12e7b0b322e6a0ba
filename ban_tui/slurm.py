"""Slurm clusters through submitit: a `[hosts.NAME]` table with a `slurm = {...}` section.

`ban run FILE --host NAME` submits one job per chain, all chains of one command as one job
array, from the cluster's login node (reached over ssh like any host: `python -m ban_tui.slurm
submit` runs there with the payload on stdin). Each job runs the engine in its own process
(`ChainJob`, pickled by submitit), so the signal Slurm sends before the time limit (SIGUSR2,
`signal_delay_s` ahead, as submitit asks with `--signal`) reaches the engine: it finishes the
step, writes last.pt and ends the run `preempted`; the job then requeues itself
(`scontrol requeue`) and, when it runs again, `ChainJob` resumes the run directory from last.pt.

Run directories live on the cluster's shared filesystem under the host's workdir, as on any
host; each holds `slurm_job` (the job id) beside the engine's files, which `ban ls --host`,
`cancel`, `rm` and the follow loop read (`squeue`, `scancel`). submitit's own files (pickles,
logs) go to `<runs_dir>/.slurm/`. Nothing here imports torch; the job imports the engine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.runs import RunPaths, list_runs, load_state, new_run_id
from engine.spec import Experiment, Host, Slurm, dumps_experiment, load
from ban_tui.remote.operations import RemoteLaunch, check_engine, remote_run_dir, remote_runs_dir
from ban_tui.remote.source import RemoteSource
from ban_tui.remote.transport import RemoteError, rpath, run_checked, ssh, words

JOB_FILE = "slurm_job"          # in a run directory: the id of the Slurm job that runs it
OUTPUT_TAG = "ban-slurm: "      # the line of `submit`/`jobs` output that holds their JSON answer
JOB_CHECK_SECONDS = 5.0         # how often a follow asks squeue whether a job is still there


# ---- in the job ---------------------------------------------------------------------------

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


# ---- on the login node --------------------------------------------------------------------

def executor(folder: Path, python: str, cfg: Slurm, name: str):
    """A submitit SlurmExecutor with the host's `slurm` table."""
    try:
        import submitit
    except ImportError:
        raise RemoteError("submitit is not installed for this python: pip install 'ban[slurm]'") from None
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), python=python)
    params = {"job_name": name, "time": cfg.time, "signal_delay_s": cfg.signal_delay_s}
    params.update({k: v for k, v in (("partition", cfg.partition), ("cpus_per_task", cfg.cpus_per_job),
                                     ("account", cfg.account), ("qos", cfg.qos), ("constraint", cfg.constraint),
                                     ("array_parallelism", cfg.max_parallel)) if v is not None})
    if cfg.gpus_per_job:
        params["gpus_per_node"] = cfg.gpus_per_job
    if cfg.mem_gb is not None:
        params["mem"] = f"{int(cfg.mem_gb * 1024)}MB"
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    ex.update_parameters(**params)
    return ex


def here(path: str) -> Path:
    """A host path as this (login-node) side sees it: `~` expanded, absolute."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def write_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def submit_here(payload: dict) -> list[dict]:
    """Write each new chain's snapshot and submit every chain as one job array; [{run_dir, job}]."""
    cfg = Slurm(**payload["slurm"])
    chains = payload["chains"]
    for c in chains:
        c["run_dir"] = str(here(c["run_dir"]))
        root = Path(c["run_dir"])
        if c.get("snapshot") is not None:
            root.mkdir(parents=True, exist_ok=True)
            write_file(RunPaths(root).snapshot, c["snapshot"])
        else:   # a resume: refuse what the engine would refuse, before a job is queued for it
            check_resumable(root)
    names = sorted({c["experiment"] for c in chains})
    ex = executor(here(payload["runs_dir"]) / ".slurm", payload["python"], cfg,
                  "ban:" + (names[0] if len(names) == 1 else f"{len(names)}-experiments"))
    with ex.batch():
        jobs = [ex.submit(ChainJob(c["run_dir"], c["experiment"], c.get("seed"), c.get("device"))) for c in chains]
    out = []
    for c, job in zip(chains, jobs):
        write_file(Path(c["run_dir"]) / JOB_FILE, f"{job.job_id}\n")
        out.append({"run_dir": c["run_dir"], "job": str(job.job_id)})
    return out


def check_resumable(root: Path) -> None:
    name = f"{root.parent.name}/{root.name}"
    if not RunPaths(root).snapshot.is_file():
        raise RuntimeError(f"{root}: expected a run directory with experiment.toml, found none")
    end = load_state(root).end
    if end is not None and end.get("status") == "ok":
        raise RuntimeError(f"{name} already finished ok; nothing to resume")
    job, state = job_active(root)
    if state:
        raise RuntimeError(f"{name} is in Slurm job {job} ({state.lower()}); nothing to resume")


def job_of(root: Path) -> str | None:
    try:
        return (Path(root) / JOB_FILE).read_text().strip() or None
    except OSError:
        return None


def queue() -> dict[str, dict]:
    """This user's jobs in squeue, one per array task: {job id: {state, reason, time}}."""
    proc = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i|%T|%r|%M"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed: {proc.stderr.strip() or proc.returncode}")
    jobs = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            jobs[parts[0]] = {"state": parts[1], "reason": parts[2], "time": parts[3]}
    return jobs


def jobs_here(runs_dir: str) -> dict[str, dict]:
    """{experiment/run-id: {job, state, reason, time}} for the runs under runs_dir that have a
    job; state "" once the job left squeue."""
    active = queue()
    out = {}
    for d in list_runs(here(runs_dir)):
        if (job := job_of(d)) is not None:
            out[f"{d.parent.name}/{d.name}"] = {"job": job, **active.get(job, {"state": "", "reason": "", "time": ""})}
    return out


def job_active(root: Path) -> tuple[str | None, str]:
    """(job id, squeue state) of a run directory here; state "" when the job is not queued."""
    job = job_of(root)
    return job, (queue().get(job, {}).get("state", "") if job else "")


def scancel(job: str) -> None:
    proc = subprocess.run(["scancel", job], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"scancel {job} failed: {proc.stderr.strip() or proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    """`python -m ban_tui.slurm submit` (payload JSON on stdin) or `jobs RUNS_DIR`: the login-node
    side of ban's Slurm commands; one tagged line of JSON on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["submit"]:
            answer = submit_here(json.load(sys.stdin))
        elif argv[:1] == ["jobs"] and len(argv) == 2:
            answer = jobs_here(argv[1])
        else:
            print("usage: python -m ban_tui.slurm submit < payload.json | jobs RUNS_DIR", file=sys.stderr)
            return 2
    except (RemoteError, RuntimeError, OSError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except Exception as exc:   # noqa: BLE001 - submitit's own failures (sbatch errors): one line
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}", file=sys.stderr)
        return 1
    print(OUTPUT_TAG + json.dumps(answer))
    return 0


# ---- from the laptop ----------------------------------------------------------------------

@dataclass
class SlurmLaunch(RemoteLaunch):
    job: str = ""


def tagged(out: str, host: Host, what: str):
    for line in reversed(out.splitlines()):
        if line.startswith(OUTPUT_TAG):
            return json.loads(line[len(OUTPUT_TAG):])
    raise RemoteError(f"host {host.name!r}: {what}: expected a line starting {OUTPUT_TAG!r}, found {out[-200:]!r}")


def remote_slurm(host: Host, args: list[str], what: str, payload: dict | None = None):
    """Run `python -m ban_tui.slurm ARGS` on the host and return its JSON answer."""
    command = f"{rpath(host.python)} -m ban_tui.slurm {words(*args)}"
    if payload is not None:
        command = f"mkdir -p {rpath(host.workdir)} && {command}"
    out = run_checked(host, command, what, None if payload is None else json.dumps(payload).encode(), timeout=180)
    return tagged(out, host, what)


def payload(host: Host, chains: list[dict]) -> dict:
    return {"slurm": asdict(host.slurm), "python": host.python, "runs_dir": remote_runs_dir(host), "chains": chains}


def submit(host: Host, chains: list[tuple[Experiment, int]], device: str | None = None) -> list[SlurmLaunch]:
    """Submit (experiment, seed) chains to the host's Slurm as one job array."""
    check_engine(host)
    sent = []
    for exp, seed in chains:
        if exp.gpus > 1:
            raise RemoteError(f"{exp.name}: gpus = {exp.gpus}: a DDP experiment on a Slurm host is not "
                              "supported yet; use gpus = 1 (one job per chain)")
        run_id = new_run_id(seed)
        sent.append({"run_dir": remote_run_dir(host, exp.name, run_id), "experiment": exp.name, "seed": int(seed),
                     "device": device, "snapshot": dumps_experiment(replace(exp, host=None)), "run_id": run_id})
    answer = remote_slurm(host, ["submit"], "submitting to Slurm", payload(host, sent))
    return [SlurmLaunch(host.name, c["experiment"], c["run_id"], c["seed"], a["run_dir"], None, a["job"])
            for c, a in zip(sent, answer)]


def resubmit(host: Host, run_dir: str) -> SlurmLaunch:
    """A new job that resumes a run directory on the host (`ban resume --host` on a Slurm host)."""
    experiment, run_id = run_dir.rstrip("/").split("/")[-2:]
    chain = {"run_dir": run_dir, "experiment": experiment, "seed": None, "device": None, "snapshot": None}
    answer = remote_slurm(host, ["submit"], "submitting to Slurm", payload(host, [chain]))
    return SlurmLaunch(host.name, experiment, run_id, 0, answer[0]["run_dir"], None, answer[0]["job"])


def list_jobs(host: Host) -> dict[str, dict]:
    """{experiment/run-id: {job, state, reason, time}} of the host's runs (squeue there)."""
    return remote_slurm(host, ["jobs", remote_runs_dir(host)], "listing Slurm jobs")


class SlurmSource(RemoteSource):
    """A RemoteSource for a run in a Slurm job: it has not ended while its job is in squeue
    (pending before its first start, or requeued after a `preempted` end)."""

    def __init__(self, host: Host, run_dir: str, **kw):
        super().__init__(host, run_dir, None, **kw)
        self.job_state = ""       # squeue's state of the job, "" once it is not there
        self.checked = 0.0

    def _check_job(self) -> None:
        if time.monotonic() - self.checked < JOB_CHECK_SECONDS:
            return
        f = rpath(f"{self.run_dir}/{JOB_FILE}")
        proc = ssh(self.host, f"j=$(cat {f} 2>/dev/null) && squeue -h -j \"$j\" -o %T 2>/dev/null || true",
                   timeout=30)
        if proc.returncode == 0:
            states = proc.stdout.decode(errors="replace").split()
            self.job_state, self.checked = (states[-1] if states else ""), time.monotonic()

    def ended(self) -> bool:
        if not super().ended():
            return False
        self._check_job()
        return self.checked > 0 and self.job_state == ""

    def status(self, now: float | None = None) -> str:
        return "pending" if self.job_state == "PENDING" else super().status(now)


def follow_source(host: Host, run_dir: str, pid: int | None = None) -> RemoteSource:
    """What follows a run on a host: its Slurm job's run on a Slurm host, else a run that may wait
    in the host's queue (the CLI and the TUI both choose here)."""
    from ban_tui.remote.queue import QueuedRemoteSource
    return SlurmSource(host, run_dir) if host.slurm is not None else QueuedRemoteSource(host, run_dir, pid)


if __name__ == "__main__":
    sys.exit(main())
