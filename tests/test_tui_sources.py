"""The event sources: LocalSource and RemoteSource implement ban_tui.follow.Source, and the
watcher reads them through that protocol only."""
from __future__ import annotations

import inspect

from engine.events import EventWriter
from engine.spec import Host
from ban_tui.follow import LocalSource, Source
from ban_tui.remote.source import RemoteSource
from ban_tui.watch import Watcher

MEMBERS = {"local", "pid", "pid_start", "run_dir", "host", "name", "state", "poll", "status", "ended", "stop"}


def test_the_protocol_declares_every_member_the_views_use():
    declared = {n for n in vars(Source) if not n.startswith("_")} | set(Source.__annotations__)
    assert declared == MEMBERS


def test_local_and_remote_sources_implement_the_protocol(tmp_path):
    local = LocalSource(tmp_path / "e" / "r1")
    far = RemoteSource(Host("box", "box"), "~/ban/runs/e/r2")   # builds nothing over ssh yet
    for source in (local, far):
        assert isinstance(source, Source)
        for member in MEMBERS:
            assert hasattr(source, member), (type(source).__name__, member)
        assert list(inspect.signature(source.status).parameters) == ["now"]
    assert (local.local, far.local) == (True, False)
    assert (local.host, far.host.name, local.run_dir, far.run_dir) == (None, "box", tmp_path / "e" / "r1", "~/ban/runs/e/r2")
    assert (local.name, far.name) == ("e/r1", "e/r2")
    assert local.poll() == [] and local.status() == "starting"   # no events yet, engine alive: starting (issue 14)


def test_the_watcher_reads_stderr_of_local_runs_only_and_stops_every_source(tmp_path):
    run = tmp_path / "runs" / "e" / "r1"
    run.mkdir(parents=True)
    writer = EventWriter(run / "events.jsonl", "r1")
    writer.emit("run_start", experiment="e", run_id="r1")
    writer.close()
    (run / "stderr.log").write_text("a warning\n")
    posted = []
    watcher = Watcher(tmp_path / "runs", posted.append)
    watcher.scan()
    far = RemoteSource(Host("box", "box"), "~/ban/runs/e/r2")    # never started: no ssh here
    watcher.add(tmp_path / "far", far)
    local_model = watcher.models[run.resolve()]
    assert local_model.poll_stderr() == ["a warning"]
    assert watcher.models[tmp_path / "far"].poll_stderr() == []   # a remote run's stderr stays there
    watcher.close()
    assert far._stop.is_set()
