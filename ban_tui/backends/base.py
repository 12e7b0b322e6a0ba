"""What a front end (the `ban` CLI, the TUI) asks of a kind of host: the `Backend` protocol, the
run listing it returns, and the errors its calls raise. One launch result for every kind:
ban_tui.launch.Launch. Never imports torch or textual."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.runs import RunState
from engine.spec import Experiment
from ban_tui.errors import BackendError

if TYPE_CHECKING:
    from ban_tui.follow import Source
    from ban_tui.launch import Launch
    from ban_tui.remote.gpus import HostStatus

# What a backend call raises when it cannot do what was asked (LookupError: no such run;
# RuntimeError: Slurm's tools said no); the message is one line.
FAILURES = (BackendError, LookupError, RuntimeError, OSError, ValueError)


@dataclass
class Listed:
    """A run as `ban ls` lists it: its directory (a Path here, a host path there), its folded
    events, its status as told where it runs, and the columns only its kind of host has."""
    dir: Path | str
    state: RunState = field(repr=False)
    status: str
    plan: list | None = None          # the snapshot's generations, where it can be read
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """experiment/run-id, as its directory says."""
        return "/".join(str(self.dir).rstrip("/").split("/")[-2:])


class Backend(Protocol):
    """One kind of host: this machine (LocalBackend), a box over ssh (SshBackend), a Slurm cluster's
    login node (SlurmBackend). ban_tui.backends.backend_for picks one for a [hosts.X] table."""

    name: str                 # the host's name ("local" for this machine)
    remote: bool              # its run directories are elsewhere (reached over ssh)
    batched: bool             # submit() takes every chain at once (one Slurm job array)
    columns: list             # the `ban ls` columns only this kind has, beside tables.RUN_COLUMNS
    where: str                # "under runs" / "on gpu1 under ~/ban/runs", for messages

    def load(self, exps: list[Experiment]) -> dict:
        """{"slots", "busy", "queued"} of its runs directory (for --hosts)."""

    def submit(self, chains: list[tuple[Experiment, int]], config_path: Path, device: str | None) -> list[Launch]:
        """Queue (experiment, seed) chains; return at once (a run may wait for a slot)."""

    def runs(self) -> list[Listed]:
        """Every run of its runs directory, oldest first."""

    def find(self, ref: str) -> Path | str:
        """A run directory by path, experiment/run-id, run id or unique prefix."""

    def source(self, run_dir, pid: int | None = None, pid_start: int | None = None) -> Source:
        """What follows the run (given pid: one just launched, lasting as long as that engine)."""

    def cancel(self, ref: str, wait: bool = True, timeout: float = 120.0) -> str:
        """Stop a run gracefully (SIGTERM, or scancel of its Slurm job); what was done."""

    def resume(self, ref: str) -> Launch:
        """Start the engine on a run again from its last checkpoint (a new job on Slurm)."""

    def rm(self, ref: str) -> str:
        """Remove a run with no live engine (a queued one leaves the queue); what was done."""

    def status(self) -> HostStatus:
        """Its GPUs and the runs running there."""

    def pull(self, run_dir, target: Path) -> Path:
        """Copy a run directory of the host under target (rsync, else scp); the copy's path."""

    def follow_args(self, config_file: Path | None = None) -> list[str]:
        """What a printed `ban follow` command adds to name this host (none for this machine)."""
