"""`ban` commands on recorded runs (events written with the real EventWriter), through typer's
CliRunner: validate, run (config errors, dry run), ls, show, follow, report, cancel errors."""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.events import EventWriter, dumps_events, read_events
from engine.runs import RunPaths, process_start_time
from engine.spec import SpecError, loads
from ban_tui.cli import app
from helpers import digits_chain

runner = CliRunner()

def digits(name: str) -> str:
    return digits_chain(name, epochs=2, batch_size=128, generations=2, ensembles=[2], seeds=[0, 1])



def dead_pid():
    """(pid, start time) of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(p.pid)
    p.wait()
    return p.pid, start


def record_run(runs_dir, experiment, run_id, finals, ens=None, status="ok", epochs=3, seed=0,
               pid=None, pid_start=None, stderr="", key="test_err"):
    """A run directory whose events say: generation g ends with test error finals[g] after
    `epochs` epochs (each epoch's error falls linearly to it); Ens*k errors from `ens`.
    status None leaves the run without run_end (running, stale or dead)."""
    root = Path(runs_dir) / experiment / run_id
    root.mkdir(parents=True)
    RunPaths(root).snapshot.write_text(f'[[experiment]]\nname = "{experiment}"\n')
    RunPaths(root).stderr.write_text(stderr)
    w = EventWriter(RunPaths(root).events, run_id)
    w.emit("run_start", experiment=experiment, config_hash="x", host="box", pid=pid, pid_start=pid_start,
           versions={}, device="cpu", seed=seed)
    for g, final in enumerate(finals):
        w.emit("gen_start", gen=g, role="teacher" if g == 0 else "student", objective="ce" if g == 0 else "ban",
               model="cnn-small", params=23456, teacher=None if g == 0 else g - 1, epochs=epochs)
        for e in range(1, epochs + 1):
            err = final + 0.01 * (epochs - e)
            w.emit("epoch", gen=g, epoch=e, epochs=epochs, train_loss=1.0 / e + g, train_err=err, test_loss=0.5,
                   **{key: err}, lr=0.1 / e, seconds=2.0, samples_per_s=700.0,
                   diagnostics={"grad_correct": 0.5 + g, "grad_dark": 0.25 * g, "conf_w_mean": 1.0,
                                "conf_w_std": 0.125 * g})
        w.emit("gen_end", gen=g, final={key: final, "train_loss": 1.0 / epochs + g},
               best={key: final}, checkpoint=f"checkpoints/gen-{g}.pt")
    for k, v in (ens or {}).items():
        w.emit("ensemble", k=k, members=list(range(1, k + 1)), **{key: v}, test_loss=0.3)
    if status:
        w.emit("run_end", status=status, error="loss became nan" if status == "failed" else None)
    w.close()
    return root


@pytest.fixture
def runs(tmp_path):
    """Three ok seeds of `quick`, one failed and one cancelled run, and one ok run of `other`."""
    runs_dir = tmp_path / "runs"
    finals = {0: [0.05, 0.04, 0.035], 1: [0.06, 0.045, 0.03], 2: [0.055, 0.05, 0.04]}
    ens = {0: {2: 0.03}, 1: {2: 0.028}, 2: {2: 0.033}}
    for s in finals:
        record_run(runs_dir, "quick", f"20250101-00000{s}-s{s}-aaaa", finals[s], ens[s], seed=s)
    record_run(runs_dir, "quick", "20250101-000010-s3-bbbb", [0.9, 0.9], status="failed", seed=3,
               stderr="Traceback\nRuntimeError: generation 1 (BAN-1): loss became nan at epoch 2 step 3\n")
    record_run(runs_dir, "quick", "20250101-000011-s4-cccc", [0.01], status="cancelled", seed=4)
    record_run(runs_dir, "other", "20250101-000012-s0-dddd", [0.2, 0.1], {1: 0.09})
    return runs_dir, finals, ens


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "validate", "ls", "show", "follow", "resume", "cancel", "report", "models"):
        assert cmd in result.output


def test_validate_summarises_good_config(tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text(digits("a") + digits("b"))
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("a: digits, 3 generations (ce -> ban -> ban)")
    assert "Ens*2" in lines[0] and "seeds [0, 1]" in lines[0]


def test_validate_prints_every_problem(tmp_path):
    text = digits("a").replace('"cnn-small"', '"cnn-smal"').replace("epochs = 2", "epochs = -1")
    cfg = tmp_path / "e.toml"
    cfg.write_text(text)
    with pytest.raises(SpecError) as err:
        loads(text, str(cfg))
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 2
    for p in err.value.problems:
        assert str(p) in result.output
    assert "did you mean 'cnn-small'" in result.output


def test_run_with_broken_config_launches_nothing(tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text(digits("a").replace("generations = 2", "generations = 2\nobjectiv = 'ban'"))
    result = runner.invoke(app, ["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "objectiv" in result.output and "nothing launched" in result.output
    assert not (tmp_path / "runs").exists()


def test_run_only_unknown_name_suggests(tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text(digits("quickstart") + digits("wide"))
    result = runner.invoke(app, ["run", str(cfg), "--only", "quikstart", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "did you mean 'quickstart'" in result.output
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_resolved_chain(tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text(digits("first") + digits("quickstart").replace("epochs = 2", "epochs = 7"))
    result = runner.invoke(app, ["run", str(cfg), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "quickstart" in out and "first:" not in out        # quickstart is the default experiment
    assert "Teacher" in out and "BAN-2" in out and "BAN-3" not in out
    assert " 7 " in out                                          # its epochs, not the other's
    assert "Ens*2 = mean of the softmax of BAN-1, BAN-2" in out
    assert out.count("would run: python -m engine run") == 2     # one per seed
    assert "--seed 1" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_only_selects_in_order(tmp_path):
    cfg = tmp_path / "e.toml"
    cfg.write_text(digits("a") + digits("b") + digits("c"))
    result = runner.invoke(app, ["run", str(cfg), "--dry-run", "--only", "c", "--only", "a"])
    assert result.exit_code == 0, result.output
    assert result.output.index("c: data set") < result.output.index("a: data set")
    assert "b: data set" not in result.output
    # without quickstart, the first experiment is the default
    result = runner.invoke(app, ["run", str(cfg), "--dry-run"])
    assert "a: data set" in result.output and "b: data set" not in result.output


def test_ls_shows_every_status_plainly(runs, monkeypatch):
    runs_dir, _, _ = runs
    now = time.time()
    me = os.getpid()
    record_run(runs_dir, "live", "20250101-000020-s0-eeee", [0.1], status=None, pid=me,
               pid_start=process_start_time(me))
    pid, start = dead_pid()
    record_run(runs_dir, "live", "20250101-000021-s0-ffff", [0.1], status=None, pid=pid, pid_start=start)
    stale = record_run(runs_dir, "live", "20250101-000022-s0-gggg", [0.1], status=None)
    events = read_events(RunPaths(stale).events)
    for e in events:
        e["ts"] = now - 3600
    RunPaths(stale).events.write_text(dumps_events(events))

    result = runner.invoke(app, ["ls", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert len(lines) == 9
    expect = {"quick/20250101-000000-s0-aaaa": "ok", "quick/20250101-000010-s3-bbbb": "failed",
              "quick/20250101-000011-s4-cccc": "cancelled", "live/20250101-000020-s0-eeee": "running",
              "live/20250101-000021-s0-ffff": "dead", "live/20250101-000022-s0-gggg": "stale"}
    for run, status in expect.items():
        assert lines[run].split()[1] == status, lines[run]
    # epochs done/planned, current generation, its last-epoch test error
    assert lines["quick/20250101-000000-s0-aaaa"].split()[2:6] == ["9/9", "BAN-2", "3/3", "3.50%"]
    assert "\x1b[" not in result.output and "│" not in result.output    # plain: no colour, no boxes


def test_ls_empty_and_env_runs_dir(tmp_path, runs):
    result = runner.invoke(app, ["ls", "--runs-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 0 and "no runs under" in result.output
    result = runner.invoke(app, ["ls"], env={"BAN_RUNS_DIR": str(runs[0])})
    assert "quick/20250101-000001-s1-aaaa" in result.output


def test_show_tables_and_diagnostics(runs):
    runs_dir, finals, ens = runs
    result = runner.invoke(app, ["show", "20250101-000001", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    rows = {line.split()[0]: line.split() for line in out if len(line.split()) == 8}  # the generation table
    # generation table: objective, model, params, epochs, final train loss, last-epoch test, time
    # (no "test @ min val" column: these runs have no validation split)
    assert rows["BAN-1"][:7] == ["BAN-1", "ban", "cnn-small", "23.5k", "3/3", f"{1 / 3 + 1:.4f}",
                                 f"{100 * finals[1][1]:.2f}%"]
    assert rows["BAN-2"][7] == "6.0s" and "min val" not in result.output
    ens_line = next(line for line in out if line.startswith("Ens*2"))
    assert f"{100 * ens[1][2]:.2f}%" in ens_line
    assert ens_line.split()[-1] == f"{100 * (ens[1][2] - finals[1][0]):+.2f}"  # against the teacher
    diag = [line.split() for line in out if line.startswith("BAN-2 ") and len(line.split()) == 5]
    assert diag == [["BAN-2", "2.5000", "0.5000", "1.0000", "0.2500"]]
    assert "stderr" not in result.output


def test_show_failed_run_has_stderr_tail(runs):
    runs_dir = runs[0]
    result = runner.invoke(app, ["show", "quick/20250101-000010-s3-bbbb", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0
    assert "status failed" in result.output
    assert "loss became nan at epoch 2 step 3" in result.output


def test_show_unknown_run(runs):
    result = runner.invoke(app, ["show", "nope", "--runs-dir", str(runs[0])])
    assert result.exit_code == 2 and "no run matches 'nope'" in result.output
    result = runner.invoke(app, ["show", "2025", "--runs-dir", str(runs[0])])
    assert result.exit_code == 2 and "matches 6 runs" in result.output


def test_report_json_is_mean_and_std_over_ok_seeds(runs):
    runs_dir, finals, ens = runs
    result = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    rep = {e["name"]: e for e in json.loads(result.output)["experiments"]}
    quick = rep["quick"]
    assert quick["n"] == 3 and quick["metric"] == "test_err"     # the failed and cancelled runs are out
    assert list(quick["columns"]) == ["Teacher", "BAN-1", "BAN-2", "Ens*2"]
    for g, label in enumerate(["Teacher", "BAN-1", "BAN-2"]):
        values = [finals[s][g] for s in sorted(finals)]
        col = quick["columns"][label]
        assert col["values"] == values
        assert col["mean"] == pytest.approx(sum(values) / 3)
        assert col["std"] == pytest.approx(statistics.stdev(values))
    assert quick["columns"]["Ens*2"]["values"] == [ens[s][2] for s in sorted(ens)]
    other = rep["other"]
    ban1 = other["columns"]["BAN-1"]
    assert other["n"] == 1 and (ban1["mean"], ban1["std"], ban1["values"]) == (0.1, None, [0.1])
    assert [(d["run"], d["reason"]) for d in json.loads(result.output)["dropped"]] == [
        ("quick/20250101-000010-s3-bbbb", "ended failed"), ("quick/20250101-000011-s4-cccc", "ended cancelled")]


def test_report_human_formats_in_percent(runs):
    runs_dir, finals, _ = runs
    teacher = [100 * finals[s][0] for s in sorted(finals)]
    cell = f"{statistics.mean(teacher):.2f} ± {statistics.stdev(teacher):.2f}"
    for fmt in ("table", "md"):
        result = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", fmt])
        assert result.exit_code == 0, result.output
        assert cell in result.output
    md = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "md"]).output.splitlines()
    assert md[0].startswith("| experiment | config | metric | n |  | mean ± std | Δ vs Teacher [95% t CI, seeds] | Δ vs Teacher [95% bootstrap CI, seeds×test] |")
    assert md[2].startswith("| quick | ") and f"| err % | 3 | Teacher | {cell} |" in md[2]
    csv_out = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "csv"]).stdout.splitlines()
    assert csv_out[0].startswith("experiment,config,control,metric,column,n,mean,std,vs_teacher")
    assert csv_out[1].startswith("quick,") and csv_out[1].split(",")[3:8] == [
        "test_err %", "Teacher", "3", f"{statistics.mean(teacher):.4f}", f"{statistics.stdev(teacher):.4f}"]


def test_report_selects_runs_and_experiments(runs):
    runs_dir, finals, _ = runs
    result = runner.invoke(app, ["report", "other", "quick/20250101-000002-s2-aaaa", "--runs-dir", str(runs_dir),
                                 "--format", "json"])
    rep = {e["name"]: e for e in json.loads(result.output)["experiments"]}
    assert rep["quick"]["n"] == 1 and rep["quick"]["columns"]["Teacher"]["values"] == [finals[2][0]]
    assert rep["other"]["n"] == 1
    bad = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "xml"])
    assert bad.exit_code == 2 and "expected one of table, md, csv, json" in bad.output


def test_perplexity_runs_are_shown_and_reported_unscaled(tmp_path):
    runs_dir = tmp_path / "runs"
    record_run(runs_dir, "lm", "20250101-000000-s0-aaaa", [120.5, 98.25], {1: 97.0}, key="test_ppl")
    record_run(runs_dir, "lm", "20250101-000001-s1-aaaa", [121.5, 99.75], {1: 96.0}, key="test_ppl", seed=1)
    show = runner.invoke(app, ["show", "20250101-000000", "--runs-dir", str(runs_dir)]).output
    assert "test ppl" in show and "98.25" in show and "%" not in show
    assert "-23.50" in show                               # Ens*1 against the teacher, in ppl
    rep = json.loads(runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "json"]).output)
    (lm,) = rep["experiments"]
    assert lm["metric"] == "test_ppl" and lm["columns"]["BAN-1"]["values"] == [98.25, 99.75]
    table = runner.invoke(app, ["report", "--runs-dir", str(runs_dir)]).output
    assert f"99.00 ± {statistics.stdev([98.25, 99.75]):.2f}" in table and "ppl" in table
    follow = runner.invoke(app, ["follow", "20250101-000000", "--runs-dir", str(runs_dir)]).output
    assert "BAN-1 epoch 3/3 train_loss 1.3333 test_ppl 98.25 lr" in follow


def test_follow_finished_run_prints_history_then_exits(runs):
    runs_dir, finals, _ = runs
    result = runner.invoke(app, ["follow", "quick/20250101-000000-s0-aaaa", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    epochs = [line for line in lines if " epoch " in line]
    assert len(epochs) == 9
    assert epochs[3] == ("quick/20250101-000000-s0-aaaa BAN-1 epoch 1/3 train_loss 2.0000 test_err "
                         f"{100 * (finals[0][1] + 0.02):.2f}% lr 0.1000 2.0s")
    assert any(line.endswith("ended ok") for line in lines)
    assert "Ens*2 test_err 3.00%" in result.output


def test_follow_exit_status_of_failed_and_cancelled(runs):
    runs_dir = runs[0]
    failed = runner.invoke(app, ["follow", "20250101-000010", "--runs-dir", str(runs_dir)])
    assert failed.exit_code == 1 and "ended failed: loss became nan" in failed.output
    cancelled = runner.invoke(app, ["follow", "20250101-000011", "20250101-000000", "--runs-dir", str(runs_dir)])
    assert cancelled.exit_code == 130


def test_cancel_and_resume_refuse_without_live_engine(runs):
    runs_dir = runs[0]
    result = runner.invoke(app, ["cancel", "20250101-000000", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 1 and "already ended ok; nothing to cancel" in result.output
    result = runner.invoke(app, ["resume", "20250101-000000", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 1 and "already finished ok; nothing to resume" in result.output


def test_cli_import_and_ls_leave_torch_out(runs):
    code = ("import sys; from typer.testing import CliRunner; from ban_tui.cli import app; "
            f"r = CliRunner().invoke(app, ['ls', '--runs-dir', {str(runs[0])!r}]); "
            "assert r.exit_code == 0 and 'quick/' in r.output, r.output; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# The headless side: what `ban` (the CLI) and the ssh parts import; never textual, never torch.
HEADLESS = ("ban_tui.cli", "ban_tui.follow", "ban_tui.live", "ban_tui.tables", "ban_tui.launch",
            "ban_tui.hosts", "ban_tui.report", "ban_tui.remote.transport", "ban_tui.remote.operations",
            "ban_tui.remote.source", "ban_tui.remote.gpus")


def test_every_ban_tui_module_leaves_torch_out_and_the_headless_ones_textual_too():
    code = ("import importlib, pkgutil, sys, ban_tui\n"
            f"for name in {HEADLESS!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'textual'}))\n"
            "names = [m.name for m in pkgutil.walk_packages(ban_tui.__path__, 'ban_tui.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "print('torch' in sys.modules, len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    headless, everything = out.strip().splitlines()
    assert headless == "[]"
    torch_loaded, n = everything.split()
    assert torch_loaded == "False" and int(n) >= 20   # screens, widgets and the remote package included


def test_models_lists_the_registry_with_counts():
    from engine import models
    result = runner.invoke(app, ["models", "wrn-16-2", "wrn-28-10", "wrn-28-3", "--classes", "10"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert list(rows) == ["name", "wrn-16-2", "wrn-28-10", "wrn-28-3"]  # any registry name, not only examples
    n = models.count_params(models.build("wrn-16-2", num_classes=10))
    assert rows["wrn-16-2"][2:4] == ["10", f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"]
    from engine.param_counts import PAPER_PARAMS
    assert rows["wrn-28-10"][4] == f"{PAPER_PARAMS['wrn-28-10']:.2f}M"


def test_live_view_on_a_terminal_draws_a_bar_per_generation(runs):
    import io
    from rich.console import Console
    from ban_tui.follow import LocalSource
    from ban_tui.live import LiveView, PlainView, open_view
    runs_dir, finals, _ = runs
    console = Console(file=io.StringIO(), force_terminal=True, width=140)
    source = LocalSource(runs_dir / "quick" / "20250101-000000-s0-aaaa")
    with open_view(console) as view:
        assert isinstance(view, LiveView)
        view(source, source.poll())
    bars = [(t.description.split()[-1], t.completed, t.total) for t in view.progress.tasks]
    assert bars == [("Teacher", 3, 3), ("BAN-1", 3, 3), ("BAN-2", 3, 3)]
    text = console.file.getvalue()
    assert f"epoch 3/3  loss {1 / 3 + 2:.4f}  err {100 * finals[0][2]:.2f}%  ETA 0:00:00  (chain 9/9 epochs, ETA 0:00:00)" in text
    assert "ended ok" in text                                   # other events print above the bars
    assert isinstance(open_view(Console(file=io.StringIO())), PlainView)   # not a terminal: plain lines


def test_eta_is_mean_epoch_time_times_epochs_left():
    from engine.runs import GenState
    from ban_tui.tables import gen_eta
    assert gen_eta(GenState(gen=1, epoch=2, epochs=5, seconds=8.0)) == 12.0
    assert gen_eta(GenState(gen=1, epoch=0, epochs=5)) is None          # nothing to estimate from yet
    assert gen_eta(GenState(gen=1, epoch=5, epochs=5, seconds=9.0, done=True)) == 0.0


def test_default_runs_dir_comes_from_the_config_in_the_current_directory(runs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("BAN_RUNS_DIR", raising=False)
    assert "no runs under runs" in runner.invoke(app, ["ls"]).output
    (work / "experiments.toml").write_text(f'[defaults]\nruns_dir = "{runs[0]}"\n')
    assert "quick/20250101-000001-s1-aaaa" in runner.invoke(app, ["ls"]).output


BROKEN = sorted((Path(__file__).parent / "broken_configs").glob("*.toml"))


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_ban_run_refuses_every_broken_config(path, tmp_path, monkeypatch):
    """Exit 2, the problem named with its file and line, no traceback, no run directory."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert f"{path}:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == []
