"""The run store: where runs live, what a run directory holds, and what state a run is in.

Layout: ``<runs_dir>/<experiment>/<run_id>/`` with the files named in `RunPaths`.
`RunState` folds a run's events into the summary every view shows (CLI tables, TUI panels,
reports), so that "what is the best error of BAN-2" is computed in one place.

Imports no torch and no textual.
"""
from __future__ import annotations

import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import psutil

from engine.events import EventReader, read_events_checked, warn_skipped

HEARTBEAT_SECONDS = 10.0
STALE_AFTER = 3 * HEARTBEAT_SECONDS  # no event for this long and the process is not known alive

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=,-]{0,127}$")   # = and , for sweep cells


def check_name(name: str, what: str = "name") -> str:
    """Experiment and run names become directory names: keep them to a safe alphabet so a
    name can never escape the runs directory or mean something to a shell."""
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: expected letters, digits and . _ + - = , "
                         "(starting with a letter or digit, at most 128 characters)")
    return name


class _InRun:
    """A fixed path inside a run directory: `events = _InRun("events.jsonl")` reads as
    `RunPaths(root).events == root / "events.jsonl"`."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, paths, owner=None):
        return self if paths is None else paths.root.joinpath(*self.parts)


HOLD = "HOLD"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    snapshot = _InRun("experiment.toml")
    events = _InRun("events.jsonl")
    checkpoints = _InRun("checkpoints")
    probs = _InRun("probs")
    results = _InRun("results.json")
    stdout = _InRun("stdout.log")
    stderr = _InRun("stderr.log")
    pid = _InRun("pid")
    last_checkpoint = _InRun("checkpoints", "last.pt")

    def holds(self) -> tuple[Path, Path]:
        """The files that hold this run between epochs while one exists: HOLD in the run's own
        directory, or in its experiment's directory (runs/<experiment>/HOLD holds every run of it)."""
        return self.root / HOLD, self.root.parent / HOLD

    def gen_checkpoint(self, gen: int) -> Path:
        return self.checkpoints / f"gen-{gen}.pt"

    def gen_probs(self, gen: int) -> Path:
        return self.probs / f"gen-{gen}.npy"

    @property
    def test_labels(self) -> Path:
        """The test set's labels (int64, a classifier's run), beside its probabilities: what
        `ban report`'s bootstrap over test examples scores them against."""
        return self.probs / "labels.npy"


def snapshot_experiment(root: Path) -> dict | None:
    """The experiment table of a run's snapshot (experiment.toml parsed, not validated: readers
    that must not import the spec machinery); None when the file is missing, unreadable, not
    TOML or holds no experiment table."""
    try:
        exps = tomllib.loads(RunPaths(Path(root)).snapshot.read_text()).get("experiment")
    except (OSError, ValueError):
        return None
    return exps[0] if isinstance(exps, list) and exps and isinstance(exps[0], dict) else None


RUNS_DIR_ENV = "BAN_RUNS_DIR"


def default_runs_dir(option=None, config_path="experiments.toml") -> Path:
    """--runs-dir, else $BAN_RUNS_DIR, else the config's [defaults] runs_dir (read even when the
    rest of the file is broken, so views still find the runs), else ./runs."""
    if option:
        return Path(option)
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    try:
        value = tomllib.loads(Path(config_path).read_text()).get("defaults", {}).get("runs_dir")
    except (OSError, ValueError, AttributeError):   # no file, not TOML, defaults not a table
        value = None
    return Path(value) if isinstance(value, str) else Path("runs")


def new_run_id(seed: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-s{seed}-{secrets.token_hex(2)}"


def run_dir(runs_dir: Path, experiment: str, run_id: str) -> Path:
    return Path(runs_dir) / check_name(experiment, "experiment name") / check_name(run_id, "run id")


# What a run directory holds from its first moments: the launcher's log files and pid file, the
# engine's lock, its snapshot (or the temp file of one being written), its events.
RUN_MARKERS = ("events.jsonl", "experiment.toml", "experiment.toml.tmp", "pid", "lock", "stderr.log")


def is_run_dir(p: Path) -> bool:
    return any((p / m).exists() for m in RUN_MARKERS)


def list_runs(runs_dir: Path) -> list[Path]:
    """Every run directory under runs_dir (also one its engine never finished creating), oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = {p.parent for pat in RUN_MARKERS for p in runs_dir.glob(f"*/*/{pat}")}
    return sorted(found, key=lambda p: (p.name[:15], str(p)))


def remove_tmp(root: Path) -> list[Path]:
    """Delete the `*.tmp` files of writes that never reached their rename (the writer was
    killed); call only while holding the run's lock. Returns what was removed."""
    root = Path(root)
    gone = []
    for d in (root, root / "checkpoints", root / "probs"):
        for tmp in d.glob("*.tmp"):
            try:
                tmp.unlink()
                gone.append(tmp)
            except FileNotFoundError:
                pass
    return gone


def find_run(runs_dir: Path, ref: str) -> Path:
    """A run by path, by `experiment/run_id`, by run id or by a unique prefix of a run id."""
    p = Path(ref)
    if is_run_dir(p):
        return p
    runs = list_runs(runs_dir)
    exact = [r for r in runs if r.name == ref or f"{r.parent.name}/{r.name}" == ref]
    if exact:
        return exact[-1]
    pref = [r for r in runs if r.name.startswith(ref) or f"{r.parent.name}/{r.name}".startswith(ref)]
    if len(pref) == 1:
        return pref[0]
    if not pref:
        raise LookupError(f"no run matches {ref!r} under {runs_dir}")
    raise LookupError(f"{ref!r} matches {len(pref)} runs under {runs_dir}: "
                      + ", ".join(f"{r.parent.name}/{r.name}" for r in pref[:5]))


def write_atomic(path: Path, data: bytes, tmp_name: str | None = None) -> None:
    """Write `path` whole or not at all: a temp file beside it (`<name>.tmp`), flushed to disk,
    renamed over it. A reader (or a resume after SIGKILL) sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name or path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)   # only still there if something failed before the rename


# ---- liveness -------------------------------------------------------------------------------

def process_start_time(pid: int) -> int | None:
    """When a process started (centiseconds since the epoch, from psutil on every OS), so that a
    recycled pid is not mistaken for the engine. None when the pid is gone."""
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def pid_alive(pid: int | None, start_time: int | None) -> bool | None:
    """True/False when it can be told; None when it cannot (no pid recorded). A process that
    started at another time (a recycled pid) or has exited unreaped (a zombie) is not alive."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if start_time is not None and round(proc.create_time() * 100) != start_time:
            return False
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    except ValueError:   # a pid psutil refuses (negative, too large)
        return False


def read_pid_file(root: Path) -> tuple[int | None, int | None]:
    """(pid, start time) of a run's pid file (the launcher writes it, the engine rewrites it)."""
    try:
        numbers = [int(x) for x in re.findall(r"\d+", (Path(root) / "pid").read_text())]
    except OSError:
        return None, None
    return (numbers[0] if numbers else None), (numbers[1] if len(numbers) > 1 else None)


# ---- state ----------------------------------------------------------------------------------

def gen_label(gen: int) -> str:
    return "Teacher" if gen == 0 else f"BAN-{gen}"


@dataclass
class GenState:
    gen: int
    role: str = ""
    objective: str = ""
    model: str = ""
    params: int | None = None
    teacher: int | None = None
    epochs: int = 0
    epoch: int = 0
    metric: str = "err"            # "err" for classifiers, "ppl" for language models
    last: dict = field(default_factory=dict)    # the latest epoch event
    val_best: float | None = None       # the minimum validation error/perplexity over epochs
    val_selected: float | None = None   # the test error/perplexity at that epoch (no val split: None)
    final: dict = field(default_factory=dict)   # from gen_end
    seconds: float = 0.0
    done: bool = False

    @property
    def label(self) -> str:
        return gen_label(self.gen)

    @property
    def test(self) -> float | None:
        """The headline number: final (last-epoch) test error or perplexity."""
        key = "test_ppl" if self.metric == "ppl" else "test_err"
        if self.final.get(key) is not None:
            return self.final[key]
        return self.last.get(key)


@dataclass
class RunState:
    """Everything a view shows about one run, folded from its events."""
    run_id: str = ""
    experiment: str = ""
    seed: int | None = None
    host: str = ""
    pid: int | None = None
    pid_start: int | None = None
    device: str = ""
    started: float | None = None
    last_ts: float | None = None
    gens: dict[int, GenState] = field(default_factory=dict)
    ensembles: dict[int, dict] = field(default_factory=dict)
    end: dict | None = None
    errors: list[str] = field(default_factory=list)
    n_events: int = 0
    last_seq: int = 0
    queued: int | None = None      # position in its runs directory's queue (engine.scheduler)
    # From the directory, where there is one (None: not known, e.g. folded from events alone).
    pid_file: tuple | None = None    # (pid, start time) of the pid file
    snapshot: bool | None = None     # experiment.toml exists
    dir_mtime: float | None = None
    damaged: list[str] = field(default_factory=list)   # the event lines skipped, one line each
    gone: bool = False               # its directory was removed while followed (RunFollower)

    def apply(self, e: dict) -> None:
        kind = e.get("kind")
        self.n_events += 1
        self.last_seq = max(self.last_seq, int(e.get("seq", 0)))
        self.last_ts = e.get("ts", self.last_ts)
        self.run_id = e.get("run", self.run_id)
        if kind == "run_start":
            self.experiment = e.get("experiment", "")
            self.seed = e.get("seed")
            self.host = e.get("host", "")
            self.pid, self.pid_start = e.get("pid"), e.get("pid_start")
            self.device = e.get("device", "")
            self.started = self.started or e.get("ts")
            self.end = None  # a resumed run starts again
        elif kind == "gen_start":
            g = self.gens.setdefault(e["gen"], GenState(e["gen"]))
            g.role, g.objective, g.model = e.get("role", ""), e.get("objective", ""), e.get("model", "")
            g.params, g.teacher, g.epochs = e.get("params"), e.get("teacher"), e.get("epochs", 0)
            g.metric = e.get("metric", "err")
        elif kind == "epoch":
            g = self.gens.setdefault(e["gen"], GenState(e["gen"]))
            g.epoch, g.epochs, g.last = e.get("epoch", 0), e.get("epochs", g.epochs), e
            g.seconds += e.get("seconds") or 0.0
            key = "test_ppl" if "test_ppl" in e else "test_err"
            g.metric = "ppl" if key == "test_ppl" else g.metric
            vkey = key.replace("test", "val")
            if e.get(vkey) is not None and (g.val_best is None or e[vkey] < g.val_best):
                g.val_best, g.val_selected = e[vkey], e.get(key)
        elif kind == "gen_end":
            g = self.gens.setdefault(e["gen"], GenState(e["gen"]))
            g.final, g.done = e.get("final", {}) or {}, True
        elif kind == "ensemble":
            self.ensembles[e["k"]] = e
        elif kind == "error":
            self.errors.append(e.get("message", ""))
        elif kind == "run_end":
            self.end = e

    @property
    def broken_reason(self) -> str:
        """Why a run without events is broken, in one line."""
        if self.snapshot is False:
            return "no experiment.toml: the engine stopped while creating the run (see stderr.log)"
        return "no events: the engine stopped before its first event (see stderr.log)"

    def extend(self, events) -> "RunState":
        for e in events:
            self.apply(e)
        return self

    @property
    def metric(self) -> str:
        return next((g.metric for g in self.gens.values()), "err")

    @property
    def progress(self) -> tuple[int, int]:
        """(epochs done, epochs planned so far) over the generations started."""
        return (sum(g.epoch for g in self.gens.values()), sum(g.epochs for g in self.gens.values()))

    def status(self, now: float | None = None, check_pid: bool = True) -> str:
        """ok / failed / cancelled once ended; starting (no event yet, the engine alive); broken
        (no event and no live engine: it never finished creating the run, see `broken_reason`);
        else running, stale (no heartbeat lately, the process not known alive) or dead (the
        process is gone, the run never ended); queued while it waits in the queue for a slot."""
        if self.gone:
            return "removed"
        if self.end is not None:
            return self.end.get("status", "failed")
        if self.queued is not None and self.pid is None:
            return "queued"
        now = time.time() if now is None else now
        if not self.n_events and self.last_ts is None:   # no event yet
            if self.pid_file and check_pid:
                return "starting" if pid_alive(*self.pid_file) else "broken"
            # no pid file yet: a directory being created, or one nobody finished
            young = self.dir_mtime is None or now - self.dir_mtime < STALE_AFTER
            return "starting" if self.snapshot is None or young else "broken"
        alive = pid_alive(self.pid, self.pid_start) if check_pid else None
        if alive is False:
            return "dead"
        if self.last_ts is not None and now - self.last_ts > STALE_AFTER:
            return "stale"
        return "running"


NOT_CONFIG = ("seeds", "device", "runs_dir", "host", "description", "source")   # keys that change no result


def group_hash(table: dict, ran: list[dict]) -> str:
    """What a run trained, as `ban report` groups it: a hash of its snapshot's experiment table
    (`snapshot_experiment`) without NOT_CONFIG, with what changes its numbers beside the config
    (`ran`: per run_start, the device type and each generation's resolved precision,
    engine.spec.schema.numbers_key). The engine records it in run_start, so a run whose
    snapshot is lost stays in its group."""
    import hashlib
    import json
    kept = {k: v for k, v in table.items() if k not in NOT_CONFIG}
    kept["ran"] = ran
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


LOW_SPACE = 1 << 20   # bytes: below this a file system is as good as full for an engine


def mount_point(path: Path) -> Path:
    path = Path(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def death_reason(root: Path) -> str | None:
    """Why a run that never wrote its run_end died, from what a reader can see where the engine
    could not write it: a full file system under the run (free space now), a last event line
    cut short, or "No space left" in its stderr.log. None when none of them says anything."""
    root = Path(root)
    try:
        st = os.statvfs(root)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < LOW_SPACE:
        return f"engine died: no space left on {mount_point(root)} ({free // 1024} KiB free)"
    stderr = ""
    try:
        with open(RunPaths(root).stderr, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            stderr = f.read().decode(errors="replace")
    except OSError:
        pass
    if "No space left" in stderr:
        return f"engine died: no space left on {mount_point(root)} (its stderr.log says so; space has freed since)"
    try:
        with open(RunPaths(root).events, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 1))
            torn = size > 0 and f.read(1) != b"\n"
    except OSError:
        torn = False
    if torn:
        return "engine died writing an event: the last line of events.jsonl is cut short"
    return None


def load_state(path: Path) -> RunState:
    """The state of a run directory (or of an events file)."""
    path = Path(path)
    events = path / "events.jsonl" if path.is_dir() else path
    got, problems = read_events_checked(events)
    state = RunState().extend(got)
    state.damaged = warn_skipped(events, problems)
    if path.is_dir():
        state.pid_file = read_pid_file(path) if (path / "pid").exists() else None
        state.snapshot = (path / "experiment.toml").is_file()
        state.dir_mtime = path.stat().st_mtime
    if not state.run_id:
        state.run_id = path.name if path.is_dir() else path.parent.name
        state.experiment = state.experiment or (path.parent.name if path.is_dir() else "")
    return mark_queued(state, path)


def mark_queued(state: RunState, root: Path) -> RunState:
    """Set a not yet started run's queue position from its directory's `queued` marker."""
    if state.pid is None and Path(root).is_dir():
        from engine.queue_order import queue_position
        state.queued = queue_position(root)
    return state


class RunFollower:
    """An EventReader plus the RunState it folds: the unit both the CLI and the TUI follow."""

    def __init__(self, root: Path):
        self.paths = RunPaths(Path(root))
        self.reader = EventReader(self.paths.events)
        self.state = RunState()
        self.seen = False   # its directory has existed

    def poll(self) -> list[dict]:
        events = self.reader.poll()
        self.state.extend(events)
        there = self.paths.root.is_dir()
        self.state.gone = self.seen and not there   # removed (`ban rm`): nothing more will come
        self.seen = self.seen or there              # (one not made yet is not gone)
        if self.state.gone:
            self.state.queued = None
        if len(self.reader.decoder.problems) != len(self.state.damaged):
            self.state.damaged = warn_skipped(self.paths.events, self.reader.decoder.problems)
        mark_queued(self.state, self.paths.root)
        return events
