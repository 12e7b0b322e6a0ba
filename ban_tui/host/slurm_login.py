"""The login node of a Slurm cluster: submit chains as one job array through submitit, and ask
squeue and scancel about a run's job. Run directories live on the cluster's shared filesystem
under the host's workdir; each holds `slurm_job` (the job id) beside the engine's files.
submitit's own files (pickles, logs) go to `<runs_dir>/.slurm/`. Nothing here imports torch.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from engine.runs import RunPaths, list_runs, load_state
from engine.spec import Slurm
from ban_tui.host.slurm_job import ChainJob
from ban_tui.host.wire import here

JOB_FILE = "slurm_job"          # in a run directory: the id of the Slurm job that runs it


def executor(folder: Path, python: str, cfg: Slurm, name: str):
    """A submitit SlurmExecutor with the host's `slurm` table."""
    try:
        import submitit
    except ImportError:
        raise RuntimeError("submitit is not installed for this python: pip install 'ban[slurm]'") from None
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
