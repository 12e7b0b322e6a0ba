"""Whole-chain progress and ETA (ban_tui.progress) on recorded engine runs with a real snapshot:
totals from the planned epochs of every generation, the ETA from the run's own epoch times, one
h:mm:ss format; and where the CLI shows them (`ban ls`, the live view)."""
import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ban_tui import progress as P
from ban_tui.cli import app
from ban_tui.follow import LocalSource
from ban_tui.live import LiveView
from engine import spec
from engine.events import dumps_events, read_events
from engine.runs import RunState, load_state
from test_tui_support import CANCELLED, CONFIG, DEAD, OK, copy_runs

runner = CliRunner()


def with_snapshot(run_dir, generations=2, epochs=2, model="cnn-small"):
    """The run's experiment.toml as the engine writes it (spec.dumps_experiment of the resolved config)."""
    text = CONFIG.replace("generations = 2", f"generations = {generations}").replace("epochs = 2", f"epochs = {epochs}")
    exp = spec.loads(text.replace('model = "cnn-small"', f'model = "{model}"')).experiments["tiny"]
    (run_dir / "experiment.toml").write_text(spec.dumps_experiment(exp))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    return copy_runs(tmp_path)


def test_hms_is_the_one_format():
    assert [P.hms(s) for s in (None, 0, 15.7, 141, 3725.4)] == ["-", "0:00:00", "0:00:16", "0:02:21", "1:02:05"]


def test_plan_comes_from_the_snapshot(runs):
    d = with_snapshot(runs / DEAD, generations=3, epochs=4)
    assert P.load_plan(d) == [P.PlannedGen(4, "cnn-small")] * 4
    (d / "experiment.toml").write_text("[[experiment]]\nname = 'x'\n")    # no generations: no plan
    assert P.load_plan(d) is None
    assert P.load_plan(runs / OK) is None                                  # no snapshot at all


def test_totals_count_every_planned_generation_and_eta_uses_the_runs_epoch_times(runs):
    d = with_snapshot(runs / DEAD)                      # died in BAN-1 after 1 of its 2 epochs
    state = load_state(d)
    ban1 = [e["seconds"] for e in read_events(d / "events.jsonl") if e["kind"] == "epoch" and e["gen"] == 1]
    p = P.chain_progress(state, P.load_plan(d))
    assert (str(p), p.done, p.total, p.exact) == ("3/6", 3, 6, True)     # not 3/4: BAN-2 is planned too
    # BAN-1: 1 epoch left at its own mean; BAN-2 (a student of the same model, not started): 2 at BAN-1's
    assert p.eta == pytest.approx(3 * sum(ban1) / len(ban1))
    p = P.chain_progress(state)                          # no plan: only what the events tell
    assert (str(p), p.exact, p.eta) == ("3/4+", False, None)


def test_eta_falls_back_to_the_teacher_and_other_models_only_when_it_must(runs):
    events = read_events(runs / OK / "events.jsonl")
    teacher = [e for e in events if e["seq"] <= 4]       # the teacher's first epoch only
    state = RunState().extend(teacher)
    t = teacher[-1]["seconds"]
    plan = [P.PlannedGen(2, "cnn-small"), P.PlannedGen(3, "cnn-small"), P.PlannedGen(3, "wrn-16-2")]
    assert P.chain_progress(state, plan).eta == pytest.approx((1 + 3 + 3) * t)
    first_student = [e for e in events if e["seq"] <= 12]   # BAN-1 (2 epochs by its gen_start) has one
    state = RunState().extend(first_student)
    s = first_student[-1]["seconds"]
    p = P.chain_progress(state, plan)
    assert (str(p), p.eta) == ("3/7", pytest.approx((2 - 1) * s + 3 * s))   # the student's time, not the teacher's
    assert P.chain_progress(RunState().extend(events[:2]), plan).eta is None   # no epoch measured yet


def test_ended_runs(runs):
    ok = P.chain_progress(load_state(runs / OK))
    assert (str(ok), ok.eta) == ("6/6", 0.0)             # an ok run started every generation
    cancelled = P.chain_progress(load_state(with_snapshot(runs / CANCELLED)), P.load_plan(runs / CANCELLED))
    assert (str(cancelled), cancelled.eta) == ("3/6", None)


def test_ls_shows_the_chain_totals(runs):
    with_snapshot(runs / CANCELLED)
    lines = runner.invoke(app, ["ls", "--runs-dir", str(runs)]).output.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "epochs"]
    assert next(x for x in lines if x.startswith(CANCELLED)).split()[1:3] == ["cancelled", "3/6"]
    assert next(x for x in lines if x.startswith(DEAD)).split()[1:3] == ["dead", "3/4+"]


def test_live_view_shows_the_whole_chain_and_its_eta(runs, tmp_path):
    d = with_snapshot(runs / DEAD)
    cut = tmp_path / "live" / "tiny" / d.name                      # the run as it was after BAN-1's first epoch
    cut.mkdir(parents=True)
    (cut / "experiment.toml").write_text((d / "experiment.toml").read_text())
    (cut / "events.jsonl").write_text(dumps_events(e for e in read_events(d / "events.jsonl") if e["seq"] <= 12))
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    source = LocalSource(cut)
    with LiveView(console) as view:
        view(source, source.poll())
    eta = P.chain_progress(source.state, P.load_plan(cut)).eta
    assert f"(chain 3/6 epochs, ETA {P.hms(eta)})" in console.file.getvalue()
