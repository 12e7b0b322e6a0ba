"""Slurm clusters through submitit, from the laptop: a `[hosts.NAME]` table with a `slurm = {...}`
section (ban_tui.backends.slurm drives this module).

`ban run FILE --host NAME` submits one job per chain, all chains of one command as one job
array, from the cluster's login node (reached over ssh like any host: `python -m ban_tui.host
slurm-submit` runs there with the payload on stdin; ban_tui.host.slurm_login). Each job runs the
engine in its own process (ban_tui.host.slurm_job.ChainJob), requeued before its time limit.

Each run directory holds `slurm_job` (the job id) beside the engine's files, which `ban ls
--host`, `cancel`, `rm` and the follow loop read (`squeue`, `scancel`). Nothing here imports torch.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace

from engine.runs import new_run_id
from engine.spec import Experiment, Host, Slurm, dumps_experiment
from ban_tui.host.slurm_login import JOB_FILE
from ban_tui.launch import Launch
from ban_tui.remote.operations import check_engine, remote_run_dir, remote_runs_dir
from ban_tui.remote.source import RemoteSource
from ban_tui.remote.transport import RemoteError, host_call, rpath, ssh

JOB_CHECK_SECONDS = 5.0         # how often a follow asks squeue whether a job is still there


def remote_slurm(host: Host, args: list[str], what: str, payload: dict | None = None):
    """Run `python -m ban_tui.host slurm-ARGS` on the login node and return its JSON answer."""
    before = f"mkdir -p {rpath(host.workdir)} && " if payload is not None else ""
    return host_call(host, ["slurm-" + args[0], *args[1:]], what,
                     None if payload is None else json.dumps(payload).encode(), timeout=180, before=before)


def payload(host: Host, cfg: Slurm, chains: list[dict]) -> dict:
    return {"slurm": asdict(cfg), "python": host.python, "runs_dir": remote_runs_dir(host), "chains": chains}


def submit(host: Host, cfg: Slurm, chains: list[tuple[Experiment, int]], device: str | None = None) -> list[Launch]:
    """Submit (experiment, seed) chains to the host's Slurm (its `slurm` table: cfg) as one job array."""
    check_engine(host)
    sent = []
    for exp, seed in chains:
        if exp.gpus > 1:
            raise RemoteError(f"{exp.name}: gpus = {exp.gpus}: a DDP experiment on a Slurm host is not "
                              "supported yet; use gpus = 1 (one job per chain)")
        run_id = new_run_id(seed)
        sent.append({"run_dir": remote_run_dir(host, exp.name, run_id), "experiment": exp.name, "seed": int(seed),
                     "device": device, "snapshot": dumps_experiment(replace(exp, host=None)), "run_id": run_id})
    answer = remote_slurm(host, ["submit"], "submitting to Slurm", payload(host, cfg, sent))
    return [Launch(c["experiment"], c["run_id"], a["run_dir"], None, host=host.name, job=a["job"], seed=c["seed"])
            for c, a in zip(sent, answer)]


def resubmit(host: Host, cfg: Slurm, run_dir: str) -> Launch:
    """A new job that resumes a run directory on the host (`ban resume --host` on a Slurm host)."""
    experiment, run_id = run_dir.rstrip("/").split("/")[-2:]
    chain = {"run_dir": run_dir, "experiment": experiment, "seed": None, "device": None, "snapshot": None}
    answer = remote_slurm(host, ["submit"], "submitting to Slurm", payload(host, cfg, [chain]))
    return Launch(experiment, run_id, answer[0]["run_dir"], None, host=host.name, job=answer[0]["job"])


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
