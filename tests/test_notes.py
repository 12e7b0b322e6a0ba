"""Run notes and tags (ban_tui.notes, `ban note`, `ban tag`, the tags column of `ban ls`): kept
in the run's notes.json, written whole and atomically, never in events.jsonl; concurrent
writers lose nothing; a bad file is refused, not overwritten."""
import json
import multiprocessing

import pytest
from typer.testing import CliRunner

from ban_tui import notes
from ban_tui.cli import app
from test_tui_support import CANCELLED, OK, copy_runs

runner = CliRunner()


@pytest.fixture
def runs(tmp_path):
    return copy_runs(tmp_path)


def test_tags_add_remove_in_order_and_notes_append(runs):
    d = runs / OK
    events = (d / "events.jsonl").read_bytes()
    assert notes.read(d) == notes.Notes()
    assert notes.change_tags(d, ["+baseline", "lr-sweep", "+baseline"]).tags == ["baseline", "lr-sweep"]
    assert notes.change_tags(d, ["-baseline", "+x", "-absent"]).tags == ["lr-sweep", "x"]
    notes.add_note(d, "  first  ", now=100.0)
    notes.add_note(d, "second", now=200.0)
    data = json.loads((d / "notes.json").read_text())
    assert data == {"v": 1, "tags": ["lr-sweep", "x"], "notes": [{"ts": 100.0, "text": "first"}, {"ts": 200.0, "text": "second"}]}
    assert (d / "events.jsonl").read_bytes() == events            # the engine's file is never touched
    assert sorted(p.name for p in d.iterdir()) == ["events.jsonl", "notes.json"]   # no temp or lock file left


def test_bad_input_is_refused_and_a_bad_file_never_overwritten(runs):
    d = runs / OK
    with pytest.raises(notes.NotesError, match=r"tag '\+a/b': expected \+name or -name"):
        notes.change_tags(d, ["+ok", "+a/b"])
    assert not (d / "notes.json").exists()                          # nothing half-applied
    with pytest.raises(notes.NotesError, match="a note needs some text"):
        notes.add_note(d, "   ")
    (d / "notes.json").write_text('{"tags": "oops"}')
    with pytest.raises(notes.NotesError, match=r"notes.json: key 'tags': expected a list of strings, found 'oops'"):
        notes.change_tags(d, ["+x"])
    assert (d / "notes.json").read_text() == '{"tags": "oops"}'
    assert notes.tags_str(d) == "?"
    (d / "notes.json").write_text("{not json")
    with pytest.raises(notes.NotesError, match="notes.json: not a notes file"):
        notes.read(d)


def _tag_many(run_dir, prefix):
    for i in range(15):
        notes.change_tags(run_dir, [f"+{prefix}{i}"])


def test_concurrent_writers_lose_no_change(runs):
    d = runs / OK
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_tag_many, args=(d, p)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(notes.read(d).tags) == sorted(f"{p}{i}" for p in "ab" for i in range(15))


def test_cli_note_tag_and_ls_tags_column(runs):
    args = ["--runs-dir", str(runs)]
    result = runner.invoke(app, ["tag", OK, "+baseline", "+lr-sweep", *args])
    assert result.exit_code == 0 and f"{OK}: tags baseline, lr-sweep" in result.output
    result = runner.invoke(app, ["tag", OK, "-lr-sweep", *args])           # -name is not an option
    assert result.exit_code == 0 and f"{OK}: tags baseline" in result.output
    assert runner.invoke(app, ["tag", OK, "+a/b", *args]).exit_code == 2
    assert runner.invoke(app, ["note", OK, "teacher too short", *args]).exit_code == 0
    result = runner.invoke(app, ["note", OK, *args])
    assert result.exit_code == 0 and "teacher too short" in result.output
    assert "no notes on" in runner.invoke(app, ["note", CANCELLED, *args]).output
    lines = runner.invoke(app, ["ls", *args]).output.splitlines()
    assert lines[0].split()[-1] == "tags"
    assert next(line for line in lines if line.startswith(OK)).split()[-1] == "baseline"
    assert next(line for line in lines if line.startswith(CANCELLED)).split()[-1] == "-"
    shown = runner.invoke(app, ["show", OK, *args]).output
    assert "tags baseline" in shown and "teacher too short" in shown
