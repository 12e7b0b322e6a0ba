"""SlurmBackend: a Slurm cluster through submitit on its login node, reached over ssh like any
host (ban_tui.slurm); a run is followed, cancelled and removed with its job in mind."""
from __future__ import annotations

from engine.spec import Host, Slurm
from ban_tui import slurm
from ban_tui.backends.base import Listed
from ban_tui.backends.ssh import SshBackend
from ban_tui.launch import Launch


class SlurmBackend(SshBackend):
    batched = True              # every chain of one command: one job array
    columns = [("job", "slurm job")]

    def __init__(self, host: Host, cfg: Slurm):
        super().__init__(host)
        self.cfg = cfg

    def submit(self, chains, config_path=None, device=None) -> list[Launch]:
        return slurm.submit(self.host, self.cfg, chains, device)

    def runs(self) -> list[Listed]:
        runs = super().runs()
        jobs = slurm.list_jobs(self.host)   # each run's job, as squeue says (pending before its start or a requeue)
        for r in runs:
            j = jobs.get(slurm_name(r.dir))
            if not j:
                continue
            r.extra["job"] = f"{j['job']} {j['state'].lower() or 'done'}" + (f" ({j['reason']})" if j["state"] == "PENDING" else "")
            if j["state"] == "PENDING":
                r.status = "pending"
            elif j["state"] == "RUNNING" and r.state.end is not None:   # a new job, before its run_start
                r.status = "starting"
            elif not j["state"] and not r.state.n_events:
                r.status = "never started"
        return runs

    def source(self, run_dir, pid=None, pid_start=None):
        return slurm.SlurmSource(self.host, str(run_dir))

    def resume(self, ref: str) -> Launch:
        return slurm.resubmit(self.host, self.cfg, self.find(ref))


def slurm_name(run_dir: str) -> str:
    return "/".join(str(run_dir).rstrip("/").split("/")[-2:])
