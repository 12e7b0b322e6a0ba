"""The event stream contract: whole lines, contiguous seq, readers by byte offset."""
import json
import os
import subprocess
import sys
import time

import pytest

from engine.events import EventDecoder, EventReader, EventWriter, read_events
from engine.runs import (RunState, check_name, find_run, list_runs, load_state, pid_alive,
                         process_start_time, run_dir)


def test_writer_appends_whole_lines_with_contiguous_seq(tmp_path):
    w = EventWriter(tmp_path / "events.jsonl", "r1")
    w.emit("run_start", experiment="e", pid=1)
    w.emit("epoch", gen=0, epoch=1, test_err=float("nan"))
    w.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2]
    assert all(e["v"] == 1 and e["run"] == "r1" and "ts" in e for e in events)
    assert events[1]["test_err"] is None  # NaN is not JSON: written as null


def test_writer_continues_seq_and_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path, "r1")
    for i in range(3):
        w.emit("heartbeat")
    w.close()
    with open(path, "ab") as f:   # a kill -9 in the middle of a write
        f.write(b'{"v":1,"seq":4,"ki')
    w = EventWriter(path, "r1")
    w.emit("log", level="info", message="resumed")
    w.close()
    assert [e["seq"] for e in read_events(path)] == [1, 2, 3, 4]
    assert path.read_bytes().endswith(b"\n")


def test_reader_takes_complete_lines_only_and_resumes_from_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    r = EventReader(path)
    assert r.poll() == []          # no file yet
    path.write_bytes(b'{"seq":1,"kind":"a"}\n{"seq":2,"ki')
    assert [e["seq"] for e in r.poll()] == [1]
    assert r.offset == len(b'{"seq":1,"kind":"a"}\n')
    with open(path, "ab") as f:
        f.write(b'nd":"b"}\n')
    assert [e["seq"] for e in r.poll()] == [2]
    assert r.poll() == []


def test_reader_restarts_on_shrink_or_replace_and_drops_seen_seqs(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq":1}\n{"seq":2}\n{"seq":3}\n')
    r = EventReader(path)
    assert len(r.poll()) == 3
    path.write_text('{"seq":1}\n')                       # shrank: same events again, dropped
    assert r.poll() == []
    tmp = tmp_path / "new"
    tmp.write_text('{"seq":1}\n{"seq":2}\n{"seq":3}\n{"seq":4}\n')
    os.replace(tmp, path)                                  # replaced by a longer copy
    assert [e["seq"] for e in r.poll()] == [4]


def test_decoder_counts_bad_lines_and_dedups_chunks():
    d = EventDecoder()
    out = d.feed(b'{"seq":1}\nnot json\n{"se') + d.feed(b'q":2}\n{"seq":2}\n{"seq":1}\n')
    assert [e["seq"] for e in out] == [1, 2]
    assert d.bad_lines == 1


def test_run_state_folds_a_chain():
    events = [
        {"seq": 1, "ts": 100.0, "run": "r", "kind": "run_start", "experiment": "q", "seed": 0},
        {"seq": 2, "ts": 101.0, "run": "r", "kind": "gen_start", "gen": 0, "role": "teacher",
         "objective": "ce", "model": "cnn-small", "epochs": 2},
        {"seq": 3, "ts": 102.0, "run": "r", "kind": "epoch", "gen": 0, "epoch": 1, "epochs": 2,
         "test_err": 0.2, "seconds": 1.0},
        {"seq": 4, "ts": 103.0, "run": "r", "kind": "epoch", "gen": 0, "epoch": 2, "epochs": 2,
         "test_err": 0.25, "seconds": 1.5},
        {"seq": 5, "ts": 104.0, "run": "r", "kind": "gen_end", "gen": 0, "final": {"test_err": 0.25}},
        {"seq": 6, "ts": 105.0, "run": "r", "kind": "ensemble", "k": 2, "test_err": 0.1},
        {"seq": 7, "ts": 106.0, "run": "r", "kind": "run_end", "status": "ok"},
    ]
    s = RunState().extend(events)
    g = s.gens[0]
    assert (g.label, g.val_selected, g.test, g.seconds, g.done) == ("Teacher", None, 0.25, 2.5, True)
    assert s.ensembles[2]["test_err"] == 0.1
    assert s.status() == "ok" and s.progress == (2, 2) and s.last_seq == 7


def test_status_running_stale_dead(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start_time(proc.pid)
        assert start is not None and pid_alive(proc.pid, start) is True
        assert pid_alive(proc.pid, start + 1) is False       # a recycled pid is not the engine
        now = time.time()
        s = RunState(pid=proc.pid, pid_start=start, last_ts=now)
        assert s.status(now) == "running"
        assert s.status(now + 1000) == "stale"               # alive but silent
    finally:
        proc.kill()
        proc.wait()
    s = RunState(pid=proc.pid, pid_start=start, last_ts=time.time())
    assert s.status() == "dead"
    assert RunState(last_ts=time.time() - 1000).status(check_pid=False) == "stale"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a b", "x;rm", "$(id)", "a\nb", "a" * 200])
def test_names_cannot_escape_the_runs_dir(bad, tmp_path):
    with pytest.raises(ValueError):
        check_name(bad)
    with pytest.raises(ValueError):
        run_dir(tmp_path, bad, "r1")


def test_list_and_find_runs(tmp_path):
    for exp, rid in [("q", "20260101-000000-s0-aaaa"), ("q", "20260102-000000-s1-bbbb"), ("z", "20260103-000000-s0-cccc")]:
        d = run_dir(tmp_path, exp, rid)
        d.mkdir(parents=True)
        EventWriter(d / "events.jsonl", rid).emit("run_start", experiment=exp)
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["20260101-000000-s0-aaaa", "20260102-000000-s1-bbbb", "20260103-000000-s0-cccc"]
    assert find_run(tmp_path, "20260102").name == "20260102-000000-s1-bbbb"
    assert find_run(tmp_path, "z/20260103-000000-s0-cccc").parent.name == "z"
    with pytest.raises(LookupError, match="matches 3 runs"):
        find_run(tmp_path, "2026")
    assert load_state(runs[0]).experiment == "q"
