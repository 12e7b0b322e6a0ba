"""LocalBackend: this machine's slots and scheduler (engine.scheduler) under a runs directory."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from engine import scheduler
from engine.runs import default_runs_dir, find_run, list_runs, load_state
from engine.spec import Experiment, Host
from ban_tui import launch, notes
from ban_tui.backends.base import Listed
from ban_tui.follow import LocalSource
from ban_tui.progress import chain_progress, hms, load_plan
from ban_tui.host import control
from ban_tui.remote.gpus import GPU_QUERY, LIVE, HostStatus, parse_gpus


class LocalBackend:
    """Runs on this machine. `runs_dir` None: each experiment's own runs_dir for submit, else the
    default ($BAN_RUNS_DIR, experiments.toml's runs_dir, ./runs); `table`: [hosts.local], whose
    gpus/slots become the slots of the runs directory."""

    remote = False
    batched = False
    columns = [("eta", "ETA"), ("tags", "tags")]

    def __init__(self, runs_dir=None, table: Host | None = None):
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.table = table
        self.name = table.name if table is not None else "local"

    @property
    def here(self) -> Path:
        return default_runs_dir(self.runs_dir)

    @property
    def where(self) -> str:
        return f"under {self.here}"

    def load(self, exps: list[Experiment]) -> dict:
        runs = self.runs_dir or Path(exps[0].runs_dir)
        scheduler.configure(runs, self.table.gpus if self.table else None, self.table.slots if self.table else None)
        return scheduler.load(runs)

    def submit(self, chains, config_path, device=None) -> list[launch.Launch]:
        return [launch.launch_local(config_path, exp, seed, self.runs_dir or Path(exp.runs_dir), device, host=self.table)
                for exp, seed in chains]

    def runs(self) -> list[Listed]:
        runs_dir = self.here
        scheduler.ensure_scheduler(runs_dir)   # queued runs there: make sure they will start
        now = time.time()
        out = []
        for d in list_runs(runs_dir):
            state, plan = load_state(d), load_plan(d)
            status = state.status(now)
            eta = hms(chain_progress(state, plan).eta) if status == "running" else "-"
            out.append(Listed(d, state, status, plan, {"eta": eta, "tags": notes.tags_str(d)}))
        return out

    def find(self, ref: str) -> Path:
        return find_run(self.here, ref)

    def source(self, run_dir, pid=None, pid_start=None) -> LocalSource:
        scheduler.ensure_scheduler(Path(run_dir).parent.parent)   # a queued run: its queue will start it
        return LocalSource(run_dir, pid, pid_start)

    def cancel(self, ref: str, wait: bool = True, timeout: float = 120.0) -> str:
        return control.cancel_here(self.find(ref), wait, timeout)

    def resume(self, ref: str) -> launch.Launch:
        return launch.resume_local(self.find(ref))

    def rm(self, ref: str) -> str:
        return control.rm_here(self.find(ref))

    def status(self) -> HostStatus:
        status = HostStatus(self.name, True)
        if shutil.which("nvidia-smi"):
            proc = subprocess.run(GPU_QUERY.split(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20)
            status.gpus = parse_gpus(proc.stdout) if proc.returncode == 0 else None
        status.runs = [r for r in self.runs() if r.status in LIVE]
        return status

    def pull(self, run_dir, target: Path) -> Path:
        raise ValueError(f"{run_dir} is on this machine already: nothing to pull")

    def follow_args(self, config_file=None) -> list[str]:
        return []
