"""The queue on an SSH host: submit a chain to the host's runs directory, ask how full it is,
follow a run that may still wait for a slot.

The host runs the same engine.scheduler as this machine (its slots: the host table's `gpus` or
`slots`, else its own nvidia-smi, else one), so a queued run there is a run directory with its
snapshot and a `queued` marker, started by a scheduler detached on the host: this connection
going away never touches it. One round trip per chain: the snapshot travels on stdin.
"""
from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass, replace

from engine.runs import check_name, new_run_id
from engine.spec import Experiment, Host, dumps_experiment
from ban_tui.launch import engine_command
from ban_tui.remote.operations import SNAPSHOT, RemoteLaunch, check_engine, remote_run_dir, remote_runs_dir
from ban_tui.remote.source import RemoteSource
from ban_tui.remote.transport import RemoteError, rpath, run_checked

# Run on the host: paths as the host's shell means them (relative to the home, or ~/...).
SUBMIT_CODE = """\
import json, os, sys, time
from pathlib import Path
from engine import scheduler
from engine.runs import RunPaths
req = json.loads(sys.stdin.read())
home = os.path.expanduser("~")
def at(p):
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(home, p)
cwd = at(req["cwd"])
os.makedirs(cwd, exist_ok=True)
runs, root = Path(at(req["runs_dir"])), Path(at(req["root"]))
scheduler.configure(runs, req["gpus"], req["slots"])
argv = [at(w) if i in req["paths"] else os.path.expanduser(w) for i, w in enumerate(req["argv"])]
got = scheduler.submit(root, req["snapshot"], argv, req["need"], cwd)
deadline = time.time() + req["wait"]
def first_event():
    try:
        return RunPaths(root).events.stat().st_size > 0
    except OSError:
        return False
while "pid" in got and time.time() < deadline and not first_event():
    if not scheduler.pid_alive(got["pid"], got["pid_start"]):
        tail = RunPaths(root).stderr.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
        got["died"] = tail[0]
        break
    time.sleep(0.2)
got["dir"] = str(root)
print(json.dumps(got))
"""

LOAD_CODE = """\
import json, sys
from engine import scheduler
print(json.dumps(scheduler.load(sys.argv[1])))
"""


@dataclass
class QueuedLaunch(RemoteLaunch):
    queued: int | None = None     # the position in the host's queue when no slot was free

    @property
    def how(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else f"queued #{self.queued}"


def submit(host: Host, exp: Experiment, seed: int, run_id: str | None = None, device: str | None = None,
           wait: float = 30.0, checked: bool = False) -> QueuedLaunch:
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
    out = run_checked(host, f"{rpath(host.python)} -c {shlex.quote(SUBMIT_CODE)}", "queueing the run",
                      input=json.dumps(request).encode(), timeout=wait + 60)
    try:
        got = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"host {host.name!r}: expected the queue's answer as JSON, found {out[-80:]!r}")
    if "died" in got:
        raise RemoteError(f"host {host.name!r}: the engine exited at once: {got['died'].strip()} "
                          f"(see {posixpath.join(rdir, 'stderr.log')})")
    return QueuedLaunch(host.name, exp.name, run_id, int(seed), rdir, got.get("pid"), got.get("position"))


def host_load(host: Host) -> dict:
    """{"slots", "busy", "queued"} of the host's runs directory (engine.scheduler.load, there)."""
    out = run_checked(host, f"{rpath(host.python)} -c {shlex.quote(LOAD_CODE)} {rpath(remote_runs_dir(host))}",
                      "reading the host's slots")
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"host {host.name!r}: expected the slots as JSON, found {out[-80:]!r}")


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
