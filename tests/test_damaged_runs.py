"""Views that survive any run directory: the recorded real runs (tests/fixtures/events/recorded)
damaged by deleted fields, swapped types, truncations, garbage lines and an events.jsonl that is
a directory, then `ban ls`, `show`, `report`, `plot`, `export` and the TUI's runs-table rows over
them. Hypothesis draws the damage; its example count is kept small (the suite's time)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from ban_tui.cli import app
from engine.events import check_event
from engine.runs import list_runs, load_state

RECORDED = Path(__file__).parent / "fixtures" / "events" / "recorded"
runner = CliRunner()

SWAPS = ["1", [1], {"a": 1}, None, 1e308, True, -5, "x" * 300]
damage = st.lists(st.tuples(st.sampled_from(["delete", "swap", "truncate", "garbage", "directory"]),
                            st.integers(0, 3), st.integers(0, 10 ** 6), st.sampled_from(SWAPS),
                            st.binary(min_size=1, max_size=40)), min_size=1, max_size=3)


def damage_run(events: Path, op: str, pick: int, swap, junk: bytes) -> None:
    if events.is_dir():
        return
    if op == "directory":
        events.unlink()
        events.mkdir()
        return
    data = events.read_bytes()
    lines = data.split(b"\n")[:-1]
    n = pick % max(1, len(lines))
    if op == "truncate":
        events.write_bytes(data[:pick % (len(data) + 1)])
        return
    if op == "garbage":
        lines.insert(n, junk.replace(b"\n", b" "))
    else:
        event = json.loads(lines[n])
        key = sorted(event)[pick % len(event)]
        if op == "delete":
            del event[key]
        else:
            event[key] = swap
        lines[n] = json.dumps(event).encode()
    events.write_bytes(b"\n".join(lines) + b"\n")


def cli(*args) -> str:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.output)
    assert result.exit_code in (0, 1, 2) and "Traceback" not in result.output, (args, result.output)
    return result.output


def table_rows(runs_dir: Path) -> dict:
    """The TUI runs table's rows (ban_tui.screens.runs.RunsPane.row_of over the app's run models)."""
    from ban_tui.follow import LocalSource
    from ban_tui.screens.runs import RunsPane
    from ban_tui.watch import RunModel
    rows = {}
    for d in list_runs(runs_dir):
        model = RunModel(d, LocalSource(d))
        model.poll()
        rows[d] = RunsPane.row_of(SimpleNamespace(facts={}), d, model, 1.8e9)[0]
    return rows


@settings(max_examples=12, deadline=None, derandomize=True, database=None,   # the same examples every run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage)
def test_no_view_tracebacks_over_damaged_run_directories_and_the_others_show_as_usual(tmp_path, monkeypatch, damages):
    runs_dir = tmp_path / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    shutil.copytree(RECORDED, runs_dir)
    monkeypatch.chdir(tmp_path)
    roots = list_runs(runs_dir)
    before = table_rows(runs_dir)
    touched = set()
    for op, which, pick, swap, junk in damages:
        root = roots[which % len(roots)]
        damage_run(root / "events.jsonl", op, pick, swap, junk)
        touched.add(root)
    listed = cli("ls", "--all", "--runs-dir", str(runs_dir))
    for root in roots:
        cli("show", str(root), "--runs-dir", str(runs_dir))
    cli("report", "--runs-dir", str(runs_dir))
    refs = [str(r) for r in roots]
    cli("plot", *refs, "-o", str(tmp_path / "f.png"), "--runs-dir", str(runs_dir))
    cli("export", *refs, "--tensorboard", str(tmp_path / "tb"), "--runs-dir", str(runs_dir))
    after = table_rows(runs_dir)
    for root in set(roots) - touched:   # only the damaged runs change
        assert after[root] == before[root] and not load_state(root).damaged
        assert f"{root.parent.name}/{root.name}" in listed
    for root in touched:   # every line a view skipped is named, with its line and field
        events = root / "events.jsonl"
        bad = [] if events.is_dir() else [n for n, line in enumerate(events.read_bytes().split(b"\n")[:-1], 1)
                                            if line.strip() and not valid(line)]
        damaged = load_state(root).damaged
        assert [int(w.split(" line ")[1].split(":")[0]) for w in damaged if " line " in w] == bad, damaged
        assert events.is_file() or damaged


def valid(line: bytes) -> bool:
    try:
        return check_event(json.loads(line)) is None
    except ValueError:
        return False


def test_a_wrong_typed_field_is_skipped_with_a_warning_naming_run_line_and_field(tmp_path):
    runs_dir = tmp_path / "runs"
    shutil.copytree(RECORDED, runs_dir)
    ok = runs_dir / "tiny" / "20251129-013320-s0-0k01"
    lines = (ok / "events.jsonl").read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "epoch")
    event = json.loads(lines[n])
    event["gen"] = "1"
    lines[n] = json.dumps(event)
    (ok / "events.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["ls", "--all", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert (f"warning: tiny/{ok.name}: events.jsonl line {n + 1}: gen: expected an integer, found '1'; "
            "skipped (the run is marked damaged)") in result.stderr
    assert len([w for w in result.stderr.splitlines() if w.startswith("warning:")]) == 1
    assert all(f"tiny/{r.name}" in result.stdout for r in list_runs(runs_dir) if r.parent.name == "tiny")
    (runs_dir / "broken-data" / "20251129-021500-s0-0f01" / "events.jsonl").unlink()
    (runs_dir / "broken-data" / "20251129-021500-s0-0f01" / "events.jsonl").mkdir()
    shown = runner.invoke(app, ["show", "20251129-021500", "--runs-dir", str(runs_dir)])
    assert shown.exit_code == 0 and "events.jsonl: cannot be read (Is a directory)" in shown.stderr, shown.output


def test_a_run_whose_snapshot_is_deleted_keeps_its_group_in_the_report(tmp_path):
    from ban_tui.report import config_key
    from engine.runs import group_hash, snapshot_experiment
    from engine.spec.schema import numbers_key
    root = tmp_path / "runs" / "k" / "r"
    root.mkdir(parents=True)
    (root / "experiment.toml").write_text('[[experiment]]\nname = "k"\nmodel = "cnn-small"\nseeds = [3]\nepochs = 2\n')
    table = snapshot_experiment(root)
    resolved = {"device_type": "cpu", "generations": [{"precision": "fp32"}]}   # as run_start records it
    start = {"v": 1, "seq": 1, "kind": "run_start", "config_hash": "per-seed", "resolved": resolved,
             "group_hash": group_hash(table, [numbers_key(resolved)])}
    with_snapshot = config_key(table, [start])
    assert with_snapshot == start["group_hash"]   # the engine records what the report computes
    (root / "experiment.toml").unlink()
    assert config_key(snapshot_experiment(root), [start]) == with_snapshot
