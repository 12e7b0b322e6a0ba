"""SshBackend: a box over OpenSSH with its own queue (ban_tui.remote: the host runs the same
engine.scheduler as this machine)."""
from __future__ import annotations

from pathlib import Path

from engine.spec import Host
from ban_tui.backends.base import Listed
from ban_tui.launch import Launch
from ban_tui.remote import control, operations, queue
from ban_tui.remote.gpus import HostStatus, gpu_status


class SshBackend:
    remote = True
    batched = False
    columns: list = []

    def __init__(self, host: Host):
        self.host, self.name = host, host.name
        self.checked = False      # the host's engine version was checked once in this process

    @property
    def where(self) -> str:
        return f"on {self.name} under {operations.remote_runs_dir(self.host)}"

    def check(self) -> None:
        if not self.checked:
            operations.check_engine(self.host)
            self.checked = True

    def load(self, exps) -> dict:
        self.check()
        return queue.host_load(self.host)

    def submit(self, chains, config_path=None, device=None) -> list[Launch]:
        out = []
        for exp, seed in chains:
            out.append(queue.submit(self.host, exp, seed, device=device, checked=self.checked))
            self.checked = True
        return out

    def runs(self) -> list[Listed]:
        # the status comes from the host, where the engine's pid can be checked
        return [Listed(r.dir, r.state, r.status) for r in operations.list_remote_runs(self.host)]

    def find(self, ref: str) -> str:
        return operations.find_remote_run(self.host, ref)

    def source(self, run_dir, pid=None, pid_start=None):
        return queue.QueuedRemoteSource(self.host, str(run_dir), pid)

    def cancel(self, ref: str, wait: bool = True, timeout: float = 120.0) -> str:
        return control.control(self.host, "cancel", str(ref), wait=wait, timeout=timeout)["message"]

    def resume(self, ref: str) -> Launch:
        a = control.control(self.host, "resume", str(ref))
        return Launch(a["experiment"], a["run_id"], a["run_dir"], a["pid"], host=self.name)

    def rm(self, ref: str) -> str:
        return control.control(self.host, "rm", str(ref))["message"]

    def status(self) -> HostStatus:
        return gpu_status(self.host)

    def pull(self, run_dir: str, target: Path) -> Path:
        return operations.pull(self.host, run_dir, target)

    def follow_args(self, config_file=None) -> list[str]:
        return ["--host", self.name] + (["--config", str(config_file)] if config_file else [])
