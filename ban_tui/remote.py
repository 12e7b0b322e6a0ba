"""Remote GPU boxes over SSH: launch a run there, follow its events, list its runs, pull a run
back, and read its GPUs.

The transport is the system OpenSSH client in subprocesses (argv lists, never a local shell), so
~/.ssh/config, agents, jump hosts and host-key checking work as the user set them up. Connections
are shared through a ControlMaster, so a poll costs one round trip, not a handshake.
`BAN_SSH_CONFIG=FILE` passes `-F FILE` (another ssh config, e.g. a test server's).

Every remote command line is built from quoted words (`shlex.quote`, `rpath`), so host paths and
names holding spaces, quotes, `;`, `$()` or newlines are data, never code; experiment and run names
are checked by engine.runs.check_name, so a run cannot leave the runs directory.

Remote paths are strings as the remote shell sees them: absolute, relative to the remote home,
or starting with `~/` (the remote home; `rpath` keeps that meaning when quoting).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from engine.events import EventDecoder
from engine.runs import STALE_AFTER, GenState, RunState, check_name, new_run_id, run_dir
from engine.spec import Experiment, Host, dumps_experiment
from ban_tui.launch import engine_command

NO_CONNECTION = 255       # ssh's own exit status: the connection failed, not the remote command
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0   # seconds between reconnects after a drop, doubling
SNAPSHOT = "experiment.toml"             # the uploaded resolved experiment, in the run directory


class RemoteError(Exception):
    """A remote step failed; the message is one line naming the host and what went wrong."""


# ---- transport ------------------------------------------------------------------------------

def control_path() -> str:
    """Where the shared connection's socket lives. A unix socket path holds ~104 bytes and %C
    is a 40-character hash, so a long or odd $XDG_RUNTIME_DIR falls back to /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if not base or len(base) > 50 or any(c.isspace() for c in base):
        return f"/tmp/ban-{os.getuid()}-%C"
    return os.path.join(base, "ban-%C")


def ssh_options() -> list[str]:
    """The options of every ssh/scp/rsync call. Host keys are checked as the user's config says."""
    opts = ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={control_path()}", "-o", "ControlPersist=60"]
    if os.environ.get("BAN_SSH_CONFIG"):
        opts += ["-F", os.environ["BAN_SSH_CONFIG"]]
    return opts


def destination(host: Host) -> str:
    # The config validator rejects these too; a destination starting with "-" would be an option.
    if not host.ssh or host.ssh.startswith("-") or any(c.isspace() for c in host.ssh):
        raise RemoteError(f"host {host.name!r}: expected an ssh destination like user@host or an "
                          f"alias, found {host.ssh!r}")
    return host.ssh


def ssh_argv(host: Host, command: str | None = None, options: list[str] = ()) -> list[str]:
    return ["ssh", *ssh_options(), *options, "--", destination(host)] + ([command] if command else [])


def rpath(path: str) -> str:
    """A remote path as one shell word; a leading `~/` still means the remote home."""
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def words(*args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def ssh(host: Host, command: str, input: bytes | None = None, timeout: float = 30.0):
    """Run one remote shell command line; a timeout reads as a dropped connection."""
    try:
        return subprocess.run(ssh_argv(host, command), input=input, capture_output=True,
                              stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, NO_CONNECTION, exc.output or b"",
                                           f"ssh: no answer within {timeout:g} s".encode())


def error_line(proc) -> str:
    lines = [ln.strip() for ln in (proc.stderr or b"").decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def run_checked(host: Host, command: str, what: str, input: bytes | None = None,
                timeout: float = 30.0) -> str:
    proc = ssh(host, command, input=input, timeout=timeout)
    if proc.returncode == NO_CONNECTION:
        raise RemoteError(f"host {host.name!r} ({host.ssh}): cannot connect: {error_line(proc)}")
    if proc.returncode != 0:
        raise RemoteError(f"host {host.name!r}: {what} failed: {error_line(proc)}")
    return proc.stdout.decode(errors="replace")


def close(host: Host) -> None:
    """Stop the shared connection to a host (if one is up)."""
    subprocess.run(ssh_argv(host, options=["-O", "exit"]), capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=10)


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


# ---- engine version -------------------------------------------------------------------------

# Run on both ends, so "compatible" means the same thing here and there.
VERSION_CODE = """\
import json, engine.events
try:
    from importlib.metadata import version
    v = version("ban")
except Exception:
    v = None
print(json.dumps({"schema": engine.events.SCHEMA_VERSION, "version": v}))
"""


def local_versions() -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(VERSION_CODE, {})
    return json.loads(out.getvalue())


def check_engine(host: Host, timeout: float = 60.0) -> dict:
    """The host's engine versions; RemoteError when python or the engine is missing or differs."""
    proc = ssh(host, f"{rpath(host.python)} -c {shlex.quote(VERSION_CODE)}", timeout=timeout)
    if proc.returncode == NO_CONNECTION:
        raise RemoteError(f"host {host.name!r} ({host.ssh}): cannot connect: {error_line(proc)}")
    if proc.returncode == 127:
        raise RemoteError(f"host {host.name!r}: python {host.python!r} not found there: {error_line(proc)}")
    if proc.returncode != 0:
        raise RemoteError(f"host {host.name!r}: the engine is not importable by {host.python!r} "
                          f"there: {error_line(proc)}")
    try:
        theirs = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"host {host.name!r}: expected the engine's versions as JSON from "
                          f"{host.python!r}, found {proc.stdout[:80]!r}")
    ours = local_versions()
    for key in ("schema", "version"):
        if None not in (ours.get(key), theirs.get(key)) and ours[key] != theirs[key]:
            raise RemoteError(f"host {host.name!r}: engine {key} {theirs[key]} there, {ours[key]} "
                              f"here: install the same version of ban on the host")
    return theirs


# ---- launch ---------------------------------------------------------------------------------

@dataclass
class RemoteLaunch:
    host: str
    experiment: str
    run_id: str
    seed: int
    run_dir: str          # on the host
    pid: int | None

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.run_id}"


def launch(host: Host, exp: Experiment, seed: int, run_id: str | None = None,
           device: str | None = None, wait: float = 30.0) -> RemoteLaunch:
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
    return RemoteLaunch(host.name, exp.name, run_id, int(seed), rdir, pid)


def find_remote_run(host: Host, ref: str, timeout: float = 60.0) -> str:
    """A run directory on the host by `experiment/run-id`, run id, unique prefix or path
    (engine.runs.find_run, run there)."""
    code = "import sys\nfrom engine.runs import find_run\nprint(find_run(sys.argv[1], sys.argv[2]))"
    out = run_checked(host, f"{rpath(host.python)} -c {shlex.quote(code)} "
                            f"{rpath(remote_runs_dir(host))} {shlex.quote(ref)}", "finding the run", timeout=timeout)
    return out.rstrip("\n")


# ---- follow ---------------------------------------------------------------------------------

@dataclass
class Fetch:
    """What one round trip learnt: new events and the state of the link."""
    events: list
    connected: bool
    error: str = ""
    alive: bool | None = None
    more: bool = False


class RemoteSource:
    """Follows a run's events.jsonl on a host by byte offset: the remote twin of LocalSource
    (`name`, `state`, `poll()`, `ended()`, `status()`).

    Each fetch asks for the bytes past the last complete line seen and yields the new events
    (each seq once). When the connection drops, `connected` turns False, `error` holds ssh's line
    and fetches wait a back-off (0.5 s doubling to 10 s) before trying again from the same offset,
    so a drop loses no event and shows none twice. `on_connection(source)` is called when
    `connected` changes. Give `pid` when this process launched the run: it then lasts as long as
    that pid. Fetches closer than `interval` seconds apart are skipped.

    `poll()` fetches in the caller's thread (a round trip: fine for the CLI). After `start()` a
    thread of its own fetches, and `poll()` only hands over what it found, so a UI thread that
    polls never waits on the network.
    """

    def __init__(self, host: Host, run_dir: str, pid: int | None = None, interval: float = 0.5,
                 timeout: float = 15.0, max_bytes: int = 1 << 22):
        self.host, self.run_dir, self.pid, self.pid_start = host, run_dir.rstrip("/"), pid, None
        self.events_path = posixpath.join(self.run_dir, "events.jsonl")
        self.interval, self.timeout, self.max_bytes = interval, timeout, max_bytes
        self.state = RunState()
        self.connected: bool | None = None   # None until the first fetch
        self.error = ""
        self.drops = 0
        self.alive: bool | None = None       # the engine's pid on the host, once known
        self.more = False                    # the last fetch stopped at max_bytes
        self.opened = time.time()
        self.on_connection = None
        # the fetcher's own (in the fetch thread once started)
        self.decoder = EventDecoder()
        self.backoff = 0.0
        self.next_try = 0.0
        self._found: deque[Fetch] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        parts = ["", *self.run_dir.split("/")]
        return f"{self.state.experiment or parts[-2]}/{self.state.run_id or parts[-1]}"

    def _command(self) -> str:
        f, offset = rpath(self.events_path), self.decoder.offset
        pid = self.pid or self.state.pid
        alive = f"kill -0 {int(pid)} 2>/dev/null && a=1 || a=0; " if pid else ""
        # First line "<size> <alive>", then the bytes from the offset on.
        return (f"s=$(wc -c 2>/dev/null < {f}) || s=-1; a=-; {alive}echo $s $a; "
                f"if [ $s -ge {offset} ]; then tail -c +{offset + 1} {f} | head -c {self.max_bytes}; fi")

    def fetch(self) -> Fetch | None:
        """One round trip (None while waiting out the interval or a back-off)."""
        now = time.monotonic()
        if now < self.next_try:
            return None
        proc = ssh(self.host, self._command(), timeout=self.timeout)
        header, _, data = proc.stdout.partition(b"\n")
        try:
            size, alive = header.decode().split()
            size = int(size)
        except ValueError:
            size = None
        if proc.returncode != 0 or size is None:
            self.backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, 2 * self.backoff))
            self.next_try = now + self.backoff
            return Fetch([], False, error_line(proc))
        self.backoff = 0.0
        alive = {"1": True, "0": False}.get(alive)
        if 0 <= size < self.decoder.offset:   # the file shrank or was replaced: read it again
            self.decoder.reset()
            return Fetch([], True, alive=alive, more=True)
        more = len(data) >= self.max_bytes
        self.next_try = now + (0.0 if more else self.interval)
        # A fresh decoder from the last complete line: a partial line is fetched again in full.
        self.decoder = EventDecoder(self.decoder.offset, self.decoder.last_seq)
        return Fetch(self.decoder.feed(data), True, alive=alive, more=more)

    def _apply(self, found: Fetch) -> list[dict]:
        changed = found.connected != self.connected
        self.drops += not found.connected
        self.connected, self.error, self.more = found.connected, found.error, found.more
        if found.connected:
            self.alive = found.alive
        self.state.extend(found.events)
        if changed and self.on_connection:
            self.on_connection(self)
        return found.events

    def poll(self) -> list[dict]:
        if self._thread is None:
            found = self.fetch()
            return self._apply(found) if found else []
        events = []
        while self._found:
            events += self._apply(self._found.popleft())
        return events

    def start(self) -> "RemoteSource":
        """Fetch in a daemon thread from now on (until `stop()`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fetch_loop, daemon=True,
                                            name=f"ban-remote-{self.host.name}")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            found = self.fetch()
            if found:
                self._found.append(found)
            self._stop.wait(max(0.01, self.next_try - time.monotonic()))

    def ended(self) -> bool:
        """True once the run will write nothing more: its pid is gone on the host (or, for a run
        this process did not launch, run_end seen). Never while the host is unreachable."""
        if not self.connected or self.more or self._found:
            return False
        if self.pid is not None:
            return self.alive is False
        if self.state.end is not None or self.alive is False:
            return True
        return self.alive is None and time.time() - (self.state.last_ts or self.opened) > STALE_AFTER

    def since_last_event(self) -> float | None:
        """Seconds since the newest event was written (host clock), for "disconnected, last event
        42 s ago"."""
        return None if self.state.last_ts is None else max(0.0, time.time() - self.state.last_ts)

    def status(self, now: float | None = None) -> str:
        """The run's status, with liveness told by the host rather than by a local pid."""
        s = self.state.status(now, check_pid=False)
        return "dead" if s in ("running", "stale") and self.alive is False else s


# ---- list -----------------------------------------------------------------------------------

# Folds each run's events on the host and sends back only the summaries (and the status, which
# needs the host's /proc).
LIST_CODE = """\
import dataclasses, json, sys
from engine.runs import list_runs, load_state
from engine.scheduler import ensure_scheduler
ensure_scheduler(sys.argv[1])   # queued runs there: make sure they will start
for d in list_runs(sys.argv[1]):
    s = load_state(d)
    print(json.dumps({"dir": str(d), "status": s.status(), "state": dataclasses.asdict(s)}))
"""


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
    out = run_checked(host, f"{rpath(host.python)} -c {shlex.quote(LIST_CODE)} {rpath(remote_runs_dir(host))}",
                      "listing runs", timeout=timeout)
    runs = []
    for line in out.splitlines():
        row = json.loads(line)
        runs.append(RemoteRun(host.name, row["dir"], row["status"], _state(row["state"])))
    return runs


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


# ---- GPUs -----------------------------------------------------------------------------------

GPU_QUERY = ("nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total "
             "--format=csv,noheader,nounits")
NO_GPU = "no-nvidia-smi"


@dataclass
class GpuRow:
    index: int
    name: str
    util: float | None        # percent
    mem_used: float | None    # MiB
    mem_total: float | None   # MiB


@dataclass
class HostStatus:
    name: str
    reachable: bool
    error: str = ""
    gpus: list[GpuRow] | None = None      # None: no NVIDIA GPU
    runs: list[RemoteRun] = field(default_factory=list)   # runs there that are running

    @property
    def summary(self) -> str:
        if not self.reachable:
            return f"unreachable: {self.error}"
        if self.error:
            return f"error: {self.error}"
        if self.gpus is None:
            return "no NVIDIA GPU"
        return f"{len(self.gpus)} GPU" + ("s" if len(self.gpus) != 1 else "")


HOST_COLUMNS = [("host", "host"), ("ssh", "ssh"), ("state", "status"), ("gpu", "GPU"), ("util", "util"),
                ("memory", "memory"), ("runs", "running")]


def host_rows(host: Host, status: HostStatus) -> list[dict]:
    """The lines of a host in `ban hosts` and the TUI's hosts tab: one per GPU (at least one)."""
    first = {"host": host.name, "ssh": host.ssh, "state": status.summary,
             "runs": ", ".join(r.name for r in status.runs) or "-"}
    rows = []
    for g in status.gpus or [None]:
        row = dict(first) if not rows else {}
        if g is not None:
            row["gpu"] = f"{g.index} {g.name}"
            row["util"] = "-" if g.util is None else f"{g.util:.0f}%"
            row["memory"] = ("-" if g.mem_used is None or g.mem_total is None
                             else f"{g.mem_used / 1024:.1f}/{g.mem_total / 1024:.1f} GiB")
        rows.append(row)
    return rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:      # "[N/A]", "[Not Supported]"
        return None


def parse_gpus(text: str) -> list[GpuRow]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        rows.append(GpuRow(int(cells[0]), cells[1], *(_number(c) for c in cells[2:])))
    return rows


def gpu_status(host: Host, timeout: float = 20.0, with_runs: bool = True) -> HostStatus:
    """GPU rows from nvidia-smi; a host without it has gpus=None ("no NVIDIA GPU"), an unreachable
    one reachable=False with ssh's error line. `runs` holds the host's running runs."""
    proc = ssh(host, f"command -v nvidia-smi >/dev/null 2>&1 || {{ echo {NO_GPU}; exit 0; }}; {GPU_QUERY}",
               timeout=timeout)
    if proc.returncode == NO_CONNECTION:
        return HostStatus(host.name, False, error_line(proc))
    if proc.returncode != 0:
        return HostStatus(host.name, True, f"nvidia-smi failed: {error_line(proc)}")
    out = proc.stdout.decode(errors="replace")
    status = HostStatus(host.name, True, gpus=None if out.strip() == NO_GPU else parse_gpus(out))
    if with_runs:
        try:
            status.runs = [r for r in list_remote_runs(host, timeout) if r.status == "running"]
        except (RemoteError, ValueError):
            pass   # no engine there (yet): the GPUs are still worth showing
    return status
