"""The queue on an SSH host: submit a chain to the host's runs directory, ask how full it is,
follow a run that may still wait for a slot.

The host runs the same engine.scheduler as this machine (its slots: the host table's `gpus` or
`slots`, else its own nvidia-smi, else one), so a queued run there is a run directory with its
snapshot and a `queued` marker, started by a scheduler detached on the host: this connection
going away never touches it. One round trip per chain to `python -m ban_tui.host submit`
(ban_tui.host.runs.submit_here): the request, snapshot included, travels on stdin.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import replace

from engine.runs import check_name, new_run_id
from engine.spec import Experiment, Host, dumps_experiment
from ban_tui.launch import Launch, engine_command
from ban_tui.remote.operations import SNAPSHOT, check_engine, remote_run_dir, remote_runs_dir
from ban_tui.remote.source import RemoteSource
from ban_tui.remote.transport import RemoteError, host_call, rpath

def submit(host: Host, exp: Experiment, seed: int, run_id: str | None = None, device: str | None = None,
           wait: float = 30.0, checked: bool = False) -> Launch:
    """Queue one chain on the host (started at once on a free slot). A run started at once is
    waited for up to `wait` seconds until its first event, so one that dies at once is reported
    here. `checked`: the host's engine version was already checked."""
    if not checked:
        check_engine(host)
    run_id = check_name(run_id or new_run_id(seed), "run id")
    rdir = remote_run_dir(host, exp.name, run_id)
    snap, runs = posixpath.join(rdir, SNAPSHOT), remote_runs_dir(host)
    argv = engine_command(snap, exp.name, int(seed), runs, run_id, device, exp.gpus, host.python)
    request = {"runs_dir": runs, "root": rdir, "cwd": host.workdir, "argv": argv, "need": exp.gpus,
               "paths": [i for i, w in enumerate(argv) if w in (snap, runs)], "wait": wait,
               "gpus": host.gpus, "slots": host.slots,
               # On the host the run is local: a `host` key would name a [hosts] table it lacks.
               "snapshot": dumps_experiment(replace(exp, host=None))}
    got = host_call(host, ["submit"], "queueing the run", input=json.dumps(request).encode(), timeout=wait + 60)
    if "died" in got:
        raise RemoteError(f"host {host.name!r}: the engine exited at once: {got['died'].strip()} "
                          f"(see {posixpath.join(rdir, 'stderr.log')})")
    return Launch(exp.name, run_id, rdir, got.get("pid"), queued=got.get("position"), host=host.name, seed=int(seed))


def host_load(host: Host) -> dict:
    """{"slots", "busy", "queued"} of the host's runs directory (engine.scheduler.load, there)."""
    return host_call(host, ["load", remote_runs_dir(host)], "reading the host's slots")


class QueuedRemoteSource(RemoteSource):
    """A RemoteSource for a run that may wait in the host's queue: while its `queued` marker is
    there (or the pid the scheduler started lives), the host says it is alive, so following does
    not end before the run has begun; its status reads `queued` until the engine's first event."""

    def _command(self) -> str:
        if self.pid or self.state.pid:
            return super()._command()
        q, slot = rpath(posixpath.join(self.run_dir, "queued")), rpath(posixpath.join(self.run_dir, "slot.json"))
        alive = (f"p=$(sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p' {slot} 2>/dev/null); "
                 f"{{ [ -e {q} ] || {{ [ -n \"$p\" ] && kill -0 $p 2>/dev/null; }}; }} && a=1 || a=0; ")
        return super()._command().replace("a=-; ", "a=-; " + alive, 1)

    def status(self, now: float | None = None) -> str:
        if self.state.end is None and self.state.pid is None and self.alive and not self.state.n_events:
            return "queued"
        return super().status(now)
