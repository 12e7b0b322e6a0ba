"""One backend per kind of host, behind one protocol (ban_tui.backends.base.Backend):

- `LocalBackend`  this machine: its slots and scheduler under a runs directory (ban_tui.launch).
- `SshBackend`    a box over OpenSSH with its own queue (ban_tui.remote).
- `SlurmBackend`  a Slurm cluster through submitit on its login node (ban_tui.slurm).

`backend_for` is the one reader of a [hosts.X] table's kind (`ssh`, `slurm`); every command of
the CLI and every action of the TUI is written once over what it returns. The backends are
imported when first asked for: the TUI's first frame needs none of ssh.
"""
from __future__ import annotations

from engine.spec import Host


def backend_for(host: Host | None, runs_dir=None):
    """The backend of a [hosts.X] table: no table, or one without `ssh` ([hosts.local]), is this
    machine (under runs_dir); a table with `slurm` is a Slurm login node; else a box over ssh."""
    if host is None or host.local:
        from ban_tui.backends.local import LocalBackend
        return LocalBackend(runs_dir, host)
    if host.slurm is not None:
        from ban_tui.backends.slurm import SlurmBackend
        return SlurmBackend(host, host.slurm)
    from ban_tui.backends.ssh import SshBackend
    return SshBackend(host)
