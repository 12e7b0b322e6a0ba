"""`ban` end to end: the real console script starting real engines on a tiny digits chain.

run to completion (plain lines when not a terminal) -> ls, show, report agreeing with the
events; --detach returns while the engine keeps running -> cancel -> resume to completion;
Ctrl-C in `ban run` cancels gracefully; a broken config launches nothing."""
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from engine.events import read_events
from engine.runs import RunPaths, list_runs, load_state, pid_alive

import helpers
from helpers import BAN, held, hold, wait_until

# one thread per engine: two engines share the two cores of a CI box without thrashing
ENV = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}


def ban(*args, cwd, timeout=240, **kw):
    return helpers.ban(*args, cwd=cwd, timeout=timeout, env={**ENV, "BAN_RUNS_DIR": str(Path(cwd) / "runs")}, **kw)


def write_config(tmp_path, epochs=1, generations=2, seeds=(0,)):
    cfg = tmp_path / "experiments.toml"
    cfg.write_text(helpers.digits_chain("tiny", epochs=epochs, batch_size=128, generations=generations,
                                        ensembles=[2] if generations >= 2 else [], seeds=list(seeds)))
    return cfg


def expected_columns(run_dirs):
    """Per run, from the raw events: the final test error of each generation and Ens*k."""
    out = []
    for d in run_dirs:
        events = read_events(RunPaths(d).events)
        cols = {("Teacher" if e["gen"] == 0 else f"BAN-{e['gen']}"): e["final"]["test_err"]
                for e in events if e["kind"] == "gen_end"}
        cols |= {f"Ens*{e['k']}": e["test_err"] for e in events if e["kind"] == "ensemble"}
        out.append(cols)
    return out


def test_run_to_completion_then_ls_show_report(tmp_path):
    write_config(tmp_path, epochs=1, seeds=(0, 1))
    result = ban("run", "experiments.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = list_runs(tmp_path / "runs")
    assert len(runs) == 2 and all(r.parent.name == "tiny" for r in runs)
    # plain lines, one per epoch of each generation of each run, no redraws, no colour
    epoch_line = re.compile(r"^tiny/(\S+) (Teacher|BAN-1|BAN-2) epoch (\d)/1 train_loss \d+\.\d{4} "
                            r"test_err \d+\.\d\d% lr \d+\.\d{4} \d+\.\ds$")
    lines = [m for m in map(epoch_line.match, result.stdout.splitlines()) if m]
    assert len(lines) == 2 * 3
    assert {m.group(1) for m in lines} == {r.name for r in runs}
    assert "\r" not in result.stdout and "\x1b[" not in result.stdout
    assert result.stdout.count("ended ok") == 2

    ls = ban("ls", cwd=tmp_path)
    assert ls.returncode == 0
    for r in runs:
        row = next(line for line in ls.stdout.splitlines() if line.startswith(f"tiny/{r.name}"))
        assert row.split()[1:3] == ["ok", "3/3"]

    show = ban("show", runs[0].name, cwd=tmp_path)
    assert show.returncode == 0
    cols = expected_columns(runs[:1])[0]
    gen_rows = {line.split()[0]: line.split() for line in show.stdout.splitlines()
                if line.split() and line.split()[0] in cols and len(line.split()) == 8}   # no "test @ min val" without a val split
    for label in ("Teacher", "BAN-1", "BAN-2"):
        assert gen_rows[label][6] == f"{100 * cols[label]:.2f}%"
    assert f"{100 * cols['Ens*2']:.2f}%" in show.stdout and "grad_dark" in show.stdout

    rep = ban("report", "--format", "json", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    (exp,) = json.loads(rep.stdout)["experiments"]
    per_run = expected_columns(runs)
    assert exp["name"] == "tiny" and exp["n"] == 2 and exp["metric"] == "test_err"
    assert list(exp["columns"]) == ["Teacher", "BAN-1", "BAN-2", "Ens*2"]
    for label, col in exp["columns"].items():
        values = [c[label] for c in per_run]
        assert col["values"] == values
        assert col["mean"] == pytest.approx(sum(values) / 2)
        assert col["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)


def test_detach_cancel_resume(tmp_path):
    write_config(tmp_path, epochs=5, generations=1)
    gate = hold(tmp_path / "runs" / "tiny")          # running, held after its first epoch, until cancelled
    result = ban("run", "experiments.toml", "--detach", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    root = Path(re.search(r"^started tiny/\S+ \(pid \d+\) in (\S+)$", result.stdout, re.M).group(1))
    assert root.parent == tmp_path / "runs" / "tiny" and f"ban follow {root}" in result.stdout
    # it returned while the engine runs on: the engine writes its first epoch after we are back
    wait_until(lambda: held(root), 120, "the run held after its first epoch")
    state = load_state(root)
    assert state.end is None and pid_alive(state.pid, state.pid_start)
    assert os.getsid(state.pid) == state.pid            # its own session: a Ctrl-C here never reaches it
    assert os.readlink(f"/proc/{state.pid}/fd/0") == "/dev/null"
    assert Path(os.readlink(f"/proc/{state.pid}/fd/2")) == RunPaths(root).stderr.resolve()

    cancel = ban("cancel", root.name, cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    assert "sent SIGTERM" in cancel.stdout and "cancelled" in cancel.stdout
    assert load_state(root).end["status"] == "cancelled"
    again = ban("cancel", root.name, cwd=tmp_path)
    assert again.returncode == 1 and "already ended cancelled" in again.stderr

    gate.unlink()
    resumed = ban("resume", f"tiny/{root.name}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "ended ok" in resumed.stdout
    state = load_state(root)
    assert state.status() == "ok" and [(g.gen, g.epoch) for g in state.gens.values()] == [(0, 5), (1, 5)]


def test_ctrl_c_in_run_cancels_gracefully(tmp_path):
    write_config(tmp_path, epochs=4, generations=1)
    hold(tmp_path / "runs" / "tiny")
    proc = subprocess.Popen([BAN, "run", "experiments.toml"], cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: list_runs(tmp_path / "runs") and held(list_runs(tmp_path / "runs")[0]), 120,
                   "the run held after its first epoch")
        proc.send_signal(signal.SIGINT)  # what the terminal sends to the foreground group on Ctrl-C
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    (root,) = list_runs(tmp_path / "runs")
    assert load_state(root).end["status"] == "cancelled"
    assert f"resume with: ban resume {root}" in out


def test_failing_engine_exits_1_and_show_has_its_stderr(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('{ name = "digits" }', f'{{ name = "npz", root = "{tmp_path / "no-data"}" }}'))
    result = ban("run", "experiments.toml", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^tiny/\S+ ended failed: .*no-data", result.stdout, re.M)
    (root,) = list_runs(tmp_path / "runs")
    show = ban("show", root.name, cwd=tmp_path)
    assert "status failed" in show.stdout
    stderr_lines = RunPaths(root).stderr.read_text().strip().splitlines()
    assert stderr_lines and "stderr (last lines):\n" + stderr_lines[-1] in show.stdout


def test_broken_config_exits_2_and_creates_nothing(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('"cnn-small"', '"cnn-smal"'))
    result = ban("run", "experiments.toml", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "experiments.toml:" in result.stderr and "did you mean 'cnn-small'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_quickstart_runs_its_control_and_its_report_prints_control_rows(tmp_path):
    """The shipped quickstart, cut to 1 epoch and 2 seeds (its other keys as shipped, the control
    included): `ban run` trains quickstart and quickstart+ce, and the report that ends it prints
    BAN-k beside CE-k and Ens*k beside the CE ensemble."""
    text = (Path(__file__).resolve().parents[1] / "experiments.toml").read_text()
    head, rest = text.split('name = "quickstart"\n', 1)
    table, tail = rest.split("[[experiment]]", 1)
    assert 'control = "independent"' in table
    table = re.sub(r"(?m)^epochs = \d+$", "epochs = 1", table).replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
    (tmp_path / "experiments.toml").write_text(head + 'name = "quickstart"\n' + table)
    result = ban("run", "experiments.toml", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted({r.parent.name for r in list_runs(tmp_path / "runs")}) == ["quickstart", "quickstart+ce"]
    out = result.stdout
    assert "quickstart+ce (independent CE control)" in out
    assert "Δ vs independent CE [95% t CI, seeds]" in out and "bootstrap CI, seeds×test]" in out
    for label in ("BAN-1 (vs CE-1)", "BAN-2 (vs CE-2)", "BAN-3 (vs CE-3)"):
        assert label in out, label
    rows = [line for line in out.splitlines() if line.startswith("quickstart ") and "Ens*3" in line]
    assert rows and re.search(r"Ens\*3\s+\d+\.\d\d ± \d+\.\d\d(\s+[+-]\d+\.\d\d \[[^]]+\]){1}.*[+-]\d+\.\d\d \[", rows[0])
