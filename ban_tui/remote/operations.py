"""What ban_tui.remote does on a host, one ssh command each: check the engine's versions there,
launch a run (detached, so it outlives the connection), list the host's runs, find one by
reference, and pull a run directory back. Experiment and run names are checked by
engine.runs.check_name, so a run cannot leave the runs directory.

The host runs its own install of ban: `python -m ban_tui.host VERB ARGS` (ban_tui.host), its
arguments quoted words (ban_tui.remote.transport), its answer one tagged line of JSON.
"""
from __future__ import annotations

import posixpath
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from engine.runs import GenState, RunState, check_name, new_run_id, run_dir
from engine.spec import Experiment, Host, dumps_experiment
from ban_tui.launch import Launch, engine_command
from ban_tui.host.runs import engine_versions
from ban_tui.host.wire import answer_of
from ban_tui.remote.transport import (NO_CONNECTION, RemoteError, destination, error_line, host_call, rpath,
                                      run_checked, ssh, ssh_options)

SNAPSHOT = "experiment.toml"             # the uploaded resolved experiment, in the run directory


# ---- paths on the host ----------------------------------------------------------------------

def _under(base: str, path: str) -> str:
    return path if path.startswith(("/", "~")) else posixpath.join(base, path)


def remote_runs_dir(host: Host) -> str:
    return _under(host.workdir, host.runs_dir)


def remote_run_dir(host: Host, experiment: str, run_id: str) -> str:
    return posixpath.join(remote_runs_dir(host), check_name(experiment, "experiment name"),
                          check_name(run_id, "run id"))


def run_names(remote_dir: str) -> tuple[str, str]:
    """(experiment, run id) of a run directory path, both checked."""
    parts = remote_dir.rstrip("/").split("/")
    if len(parts) < 2:
        raise RemoteError(f"expected a run directory <runs>/<experiment>/<run-id>, found {remote_dir!r}")
    return check_name(parts[-2], "experiment name"), check_name(parts[-1], "run id")



# ---- engine versions ------------------------------------------------------------------------

def check_engine(host: Host, timeout: float = 60.0) -> dict:
    """The host's engine versions; RemoteError when python or the engine is missing or differs."""
    proc = ssh(host, f"{rpath(host.python)} -m ban_tui.host versions", timeout=timeout)
    if proc.returncode == NO_CONNECTION:
        raise RemoteError(f"host {host.name!r} ({host.ssh}): cannot connect: {error_line(proc)}")
    if proc.returncode == 127:
        raise RemoteError(f"host {host.name!r}: python {host.python!r} not found there: {error_line(proc)}")
    if proc.returncode != 0:
        raise RemoteError(f"host {host.name!r}: the engine is not importable by {host.python!r} "
                          f"there: {error_line(proc)} (install the same version of ban on the host)")
    try:
        theirs = answer_of(proc.stdout.decode(errors="replace"))
    except ValueError:
        raise RemoteError(f"host {host.name!r}: expected the engine's versions as JSON from "
                          f"{host.python!r}, found {proc.stdout[:80]!r}")
    ours = engine_versions()
    for key in ("schema", "version"):
        if None not in (ours.get(key), theirs.get(key)) and ours[key] != theirs[key]:
            raise RemoteError(f"host {host.name!r}: engine {key} {theirs[key]} there, {ours[key]} "
                              f"here: install the same version of ban on the host")
    return theirs


# ---- launch ---------------------------------------------------------------------------------

def launch(host: Host, exp: Experiment, seed: int, run_id: str | None = None,
           device: str | None = None, wait: float = 30.0) -> Launch:
    """Copy the resolved experiment to the host and start the engine there, detached (own session,
    every standard stream redirected), so the run outlives this connection. Waits up to `wait`
    seconds for the first event, so a run that dies at once is reported here, not found later."""
    check_engine(host)
    run_id = check_name(run_id or new_run_id(seed), "run id")
    rdir = remote_run_dir(host, exp.name, run_id)
    snap, tmp = posixpath.join(rdir, SNAPSHOT), posixpath.join(rdir, f".{SNAPSHOT}.tmp")
    run_checked(host, f"mkdir -p {rpath(host.workdir)} {rpath(rdir)} && cat > {rpath(tmp)} && "
                      f"mv {rpath(tmp)} {rpath(snap)}",
                "copying the experiment snapshot",
                # On the host the run is local: a `host` key would name a [hosts] table it lacks.
                input=dumps_experiment(replace(exp, host=None)).encode())
    argv = engine_command(snap, exp.name, int(seed), remote_runs_dir(host), run_id, device, exp.gpus, host.python)
    engine = " ".join(rpath(word) for word in argv)   # names are check_name'd: only paths start with ~/
    events, stderr = rpath(posixpath.join(rdir, "events.jsonl")), rpath(posixpath.join(rdir, "stderr.log"))
    ticks = max(1, int(wait / 0.2))
    # `cd X || exit; cmd &` rather than `cd X && cmd &`: the latter backgrounds a subshell that
    # keeps the connection's stdout open until the engine ends.
    out = run_checked(host, (
        f"cd {rpath(host.workdir)} || exit 1; PYTHONUNBUFFERED=1 setsid nohup {engine} < /dev/null "
        f"> {rpath(posixpath.join(rdir, 'stdout.log'))} 2> {stderr} & pid=$!; i=0; "
        f"while [ $i -lt {ticks} ] && [ ! -s {events} ] && kill -0 $pid 2>/dev/null; "
        f"do sleep 0.2; i=$((i+1)); done; echo $pid; "
        f"if [ ! -s {events} ] && ! kill -0 $pid 2>/dev/null; then echo died; tail -n 3 {stderr}; fi"),
        "starting the engine", timeout=wait + 30)
    lines = out.splitlines()
    if len(lines) > 1 and lines[1] == "died":
        detail = next((ln for ln in reversed(lines[2:]) if ln.strip()), "no message")
        raise RemoteError(f"host {host.name!r}: the engine exited at once: {detail.strip()} "
                          f"(see {posixpath.join(rdir, 'stderr.log')})")
    pid = int(lines[0]) if lines and lines[0].isdigit() else None
    return Launch(exp.name, run_id, rdir, pid, host=host.name, seed=int(seed))


def find_remote_run(host: Host, ref: str, timeout: float = 60.0) -> str:
    """A run directory on the host by `experiment/run-id`, run id, unique prefix or path
    (engine.runs.find_run, run there)."""
    return host_call(host, ["find", remote_runs_dir(host), ref], "finding the run", timeout=timeout)


# ---- list -----------------------------------------------------------------------------------

@dataclass
class RemoteRun:
    host: str
    dir: str              # on the host
    status: str
    state: RunState = field(repr=False)

    @property
    def name(self) -> str:
        """experiment/run-id, as its directory says."""
        return "/".join(self.dir.rstrip("/").split("/")[-2:])


def _state(d: dict) -> RunState:
    known = {f.name for f in fields(RunState)}
    gen_keys = {f.name for f in fields(GenState)}
    s = RunState(**{k: v for k, v in d.items() if k in known and k not in ("gens", "ensembles")})
    s.gens = {int(k): GenState(**{a: b for a, b in g.items() if a in gen_keys}) for k, g in d["gens"].items()}
    s.ensembles = {int(k): v for k, v in d["ensembles"].items()}
    return s


def list_remote_runs(host: Host, timeout: float = 60.0) -> list[RemoteRun]:
    """The host's runs, each folded there (ban_tui.host.runs.list_here): only summaries travel."""
    rows = host_call(host, ["list", remote_runs_dir(host)], "listing runs", timeout=timeout)
    return [RemoteRun(host.name, row["dir"], row["status"], _state(row["state"])) for row in rows]


# ---- pull -----------------------------------------------------------------------------------

def _home_relative(path: str) -> str:
    # rsync -s and scp (sftp) take paths verbatim, relative to the remote home; no shell sees them.
    return path[2:] if path.startswith("~/") else path


def pull(host: Host, remote_dir: str, local_runs_dir: Path, timeout: float = 3600.0,
         use_rsync: bool | None = None) -> Path:
    """Copy a run directory to <local_runs_dir>/<experiment>/<run-id> and return that path.
    rsync where both ends have it (incremental: pulling a running run again fetches what is new),
    else scp -r into a temp directory renamed into place. `use_rsync=False` forces scp."""
    experiment, run_id = run_names(remote_dir)
    dest = run_dir(Path(local_runs_dir), experiment, run_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = f"{destination(host)}:{_home_relative(remote_dir.rstrip('/'))}"
    if use_rsync is None:
        use_rsync = bool(shutil.which("rsync")) and ssh(host, "command -v rsync >/dev/null").returncode == 0
    if use_rsync:
        argv = ["rsync", "-a", "-s", "-e", shlex.join(["ssh", *ssh_options()]), src + "/", str(dest) + "/"]
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
        if proc.returncode != 0:
            raise RemoteError(f"host {host.name!r}: rsync of {remote_dir} failed: {error_line(proc)}")
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".pull-{run_id}-", dir=dest.parent))
    try:
        proc = subprocess.run(["scp", "-r", "-q", *ssh_options(), "--", src, str(tmp / "run")],
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
        if proc.returncode != 0:
            raise RemoteError(f"host {host.name!r}: scp of {remote_dir} failed: {error_line(proc)}")
        if dest.exists():   # an older pull: move it aside, into the temp dir that goes away
            dest.rename(tmp / "old")
        (tmp / "run").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


