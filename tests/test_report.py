"""`ban report` on hand-made run directories: groups by (experiment, configuration), one run per
seed (the latest ok one), says what it left out and why, warns when a name covers several
configurations, and pairs every generation with the teacher of the same seed (Student-t CI)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ban_tui import report
from ban_tui.cli import app
from engine.events import EventWriter
from engine.runs import RunPaths, RunState
from helpers import digits_chain

runner = CliRunner()

SNAPSHOT = """[[experiment]]
name = "{name}"
description = "{description}"
seeds = {seeds}
device = "{device}"
epochs = {epochs}
dataset = {{ name = "digits" }}
"""


def make_run(runs_dir, name, run_id, seed, finals, ens=None, status="ok", epochs=4, started=0.0,
             description="d", seeds="[0, 1, 2]", device="cpu", objectives=None, teachers=None,
             ran_on="cpu", precision=None, machine=None, threads=None):
    """A run directory written by hand: snapshot (its `device` key: `device`), run_start at ts
    `started` (device `ran_on`; with `precision`, the resolved precision of every generation, and
    `machine`/`threads` as the engine records them), a gen_start and gen_end per generation (final
    test error finals[g]), ensembles, run_end `status`."""
    root = Path(runs_dir) / name / run_id
    root.mkdir(parents=True)
    RunPaths(root).snapshot.write_text(SNAPSHOT.format(name=name, description=description, seeds=seeds,
                                                       device=device, epochs=epochs))
    w = EventWriter(RunPaths(root).events, run_id)
    resolved = precision and {"device_type": ran_on, "generations": [
        {"precision": precision, "channels_last": False, "compile": False} for _ in finals]}
    w.emit("run_start", experiment=name, config_hash="same-for-all", host="box", pid=None, pid_start=None,
           versions={}, device=ran_on, seed=seed, threads=threads, resolved=resolved, machine=machine)
    objectives = objectives or ["ce"] + ["ban"] * (len(finals) - 1)
    teachers = teachers or [None] + list(range(len(finals) - 1))
    for g, final in enumerate(finals):
        w.emit("gen_start", gen=g, role="teacher" if teachers[g] is None else "student", objective=objectives[g],
               model="cnn-small", params=1000, teacher=teachers[g], epochs=epochs)
        w.emit("epoch", gen=g, epoch=epochs, epochs=epochs, train_loss=0.1, train_err=0.0, test_loss=0.2,
               test_err=final, lr=0.01, seconds=1.0, samples_per_s=10.0, diagnostics={})
        w.emit("gen_end", gen=g, final={"test_err": final}, val_min={}, checkpoint="x")
    for k, v in (ens or {}).items():
        w.emit("ensemble", k=k, members=list(range(1, k + 1)), test_err=v)
    if status:
        w.emit("run_end", status=status, error="boom" if status == "failed" else None)
    w.close()
    # the events' ts are "now"; make start times distinct and ordered as the test says
    lines = [json.loads(x) for x in RunPaths(root).events.read_text().splitlines()]
    for e in lines:
        e["ts"] = started + e["seq"] * 0.001
    RunPaths(root).events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return root


def by_name(rep):
    return {(e["name"], e["config"]): e for e in rep["experiments"]}


def test_two_configs_under_one_name_are_two_groups_and_a_warning(tmp_path):
    make_run(tmp_path, "exp", "r0", 0, [0.10, 0.08], epochs=4, started=1)
    make_run(tmp_path, "exp", "r1", 1, [0.12, 0.09], epochs=4, started=2)
    make_run(tmp_path, "exp", "r2", 0, [0.30, 0.20], epochs=2, started=3)
    # what does not change training (description, the device key, the seed list) does not split a group
    make_run(tmp_path, "exp", "r3", 2, [0.11, 0.07], epochs=4, started=4, description="other words",
             seeds="[2]", device="cuda")
    rep = report.collect(sorted(p for p in tmp_path.glob("exp/*")))
    groups = sorted(rep["experiments"], key=lambda e: e["n"])
    assert [(e["name"], e["n"], e["runs"]) for e in groups] == [
        ("exp", 1, ["exp/r2"]), ("exp", 3, ["exp/r0", "exp/r1", "exp/r3"])]
    assert groups[0]["config"] != groups[1]["config"]
    assert groups[1]["columns"]["Teacher"]["values"] == [0.10, 0.12, 0.11]
    assert groups[0]["columns"]["Teacher"]["values"] == [0.30]
    (warning,) = rep["warnings"]
    assert "'exp' covers 2 configurations" in warning
    assert f"{groups[0]['config']} (1 seeds)" in warning and f"{groups[1]['config']} (3 seeds)" in warning
    assert rep["dropped"] == []


def test_runs_that_resolved_to_another_precision_or_device_type_are_never_pooled(tmp_path):
    """The same snapshot, run under bf16 and fp32 (precision = "auto" on two machines), and on a
    GPU: three groups, the fp32 seed 0 never replaces the bf16 one."""
    make_run(tmp_path, "exp", "b0", 0, [0.10, 0.08], started=1, precision="bf16")
    make_run(tmp_path, "exp", "b1", 1, [0.12, 0.09], started=2, precision="bf16")
    make_run(tmp_path, "exp", "f0", 0, [0.30, 0.20], started=3, precision="fp32")
    make_run(tmp_path, "exp", "g0", 0, [0.50, 0.40], started=4, precision="bf16", ran_on="cuda")
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    assert sorted(e["runs"] for e in rep["experiments"]) == [["exp/b0", "exp/b1"], ["exp/f0"], ["exp/g0"]]
    assert len({e["config"] for e in rep["experiments"]}) == 3
    assert rep["dropped"] == []
    assert any("covers 3 configurations" in w for w in rep["warnings"])


def test_a_group_of_mixed_device_models_or_threads_is_reported_with_a_warning(tmp_path):
    epyc, xeon = {"cpu": "AMD EPYC 9B14", "cpu_bf16": True}, {"cpu": "Intel Xeon 8375C", "cpu_bf16": True}
    make_run(tmp_path, "exp", "r0", 0, [0.10, 0.08], started=1, precision="bf16", machine=epyc, threads=2)
    make_run(tmp_path, "exp", "r1", 1, [0.12, 0.09], started=2, precision="bf16", machine=xeon, threads=1)
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    assert [e["n"] for e in rep["experiments"]] == [2]
    config = rep["experiments"][0]["config"]
    assert f"experiment 'exp' ({config}) mixes device models: AMD EPYC 9B14, Intel Xeon 8375C" in rep["warnings"]
    assert f"experiment 'exp' ({config}) mixes thread counts: 1, 2" in rep["warnings"]
    make_run(tmp_path, "same", "r0", 0, [0.10, 0.08], started=1, precision="bf16", machine=epyc, threads=2)
    make_run(tmp_path, "same", "r1", 1, [0.12, 0.09], started=2, precision="bf16", machine=epyc, threads=2)
    assert report.collect(sorted(tmp_path.glob("same/*")))["warnings"] == []


def test_seed_zero_twice_keeps_the_latest_ok_run_and_says_so(tmp_path):
    make_run(tmp_path, "exp", "old", 0, [0.10, 0.08], started=1)
    make_run(tmp_path, "exp", "new", 0, [0.20, 0.18], started=5)
    make_run(tmp_path, "exp", "mid", 0, [0.15, 0.13], started=3)
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    (e,) = rep["experiments"]
    assert e["n"] == 1 and e["runs"] == ["exp/new"] and e["columns"]["Teacher"]["values"] == [0.20]
    assert e["columns"]["Teacher"]["std"] is None and e["columns"]["Teacher"]["n"] == 1
    assert [(d["run"], d["seed"]) for d in rep["dropped"]] == [("exp/old", 0), ("exp/mid", 0)]
    assert all("the later ok run" in d["reason"] for d in rep["dropped"])
    assert rep["warnings"] == []


def test_a_failed_seed_is_left_out_with_its_reason(tmp_path):
    make_run(tmp_path, "exp", "a", 0, [0.10, 0.08], started=1)
    make_run(tmp_path, "exp", "b", 1, [0.12, 0.09], started=2)
    make_run(tmp_path, "exp", "c", 2, [0.90], status="failed", started=3)
    make_run(tmp_path, "exp", "d", 1, [0.50], status="failed", started=4)   # a failed re-run of seed 1
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    (e,) = rep["experiments"]
    assert e["n"] == 2 and e["seeds"] == [0, 1] and e["runs"] == ["exp/a", "exp/b"]
    assert [(d["run"], d["seed"], d["reason"]) for d in rep["dropped"]] == [
        ("exp/c", 2, "ended failed"), ("exp/d", 1, "ended failed")]
    text = report.to_text(rep)
    assert "left out exp/c (seed 2): ended failed" in text and "left out exp/d (seed 1): ended failed" in text


def test_paired_ci_equals_a_hand_computation(tmp_path):
    teacher = [0.100, 0.120, 0.090, 0.110]
    ban1 = [0.095, 0.118, 0.080, 0.112]
    ens = [0.090, 0.110, 0.085, 0.100]
    for s in range(4):
        make_run(tmp_path, "exp", f"r{s}", s, [teacher[s], ban1[s]], {1: ens[s]}, started=s)
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    (e,) = rep["experiments"]
    d = [b - t for b, t in zip(ban1, teacher)]
    mean, sd = sum(d) / 4, math.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3)
    half = 3.182446305284263 * sd / 2        # t(0.975, 3), from a printed table: 3.182
    got = e["columns"]["BAN-1"]["vs_teacher"]
    assert got["n"] == 4 and got["seeds"] == [0, 1, 2, 3]
    assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
    assert got["ci"] == pytest.approx([mean - half, mean + half])
    assert e["columns"]["Teacher"]["vs_teacher"] is None
    col = e["columns"]["Ens*1"]
    assert col["mean"] == pytest.approx(statistics.fmean(ens)) and col["std"] == pytest.approx(statistics.stdev(ens))
    table = report.to_text(rep)
    assert f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]" in table


def test_t_quantiles_match_printed_tables():
    for df, q in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert report.t_quantile(0.975, df) == pytest.approx(q, abs=5e-4)


def test_pairing_uses_only_the_seeds_both_have(tmp_path):
    make_run(tmp_path, "exp", "r0", 0, [0.10, 0.08], started=0)
    make_run(tmp_path, "exp", "r1", 1, [0.20], started=1)          # no BAN-1 for seed 1
    (e,) = report.collect(sorted(tmp_path.glob("exp/*")))["experiments"]
    d = e["columns"]["BAN-1"]["vs_teacher"]
    assert d["seeds"] == [0] and d["mean"] == pytest.approx(-0.02) and d["ci"] is None
    assert "[n/a: n<2]" in report.to_text({"experiments": [e], "warnings": [], "dropped": []})


def test_one_seed_prints_n_a_not_a_zero_spread(tmp_path):
    make_run(tmp_path, "exp", "r0", 0, [0.10, 0.08], started=0)
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    for text in (report.to_text(rep), report.to_markdown(rep)):
        assert "10.00 ± n/a" in text and "8.00 ± n/a" in text and "-2.00 [n/a: n<2]" in text
        assert "± 0.00" not in text
    lines = report.to_csv(rep).splitlines()
    assert lines[1].split(",")[4:8] == ["Teacher", "1", "10.0000", ""]


def test_students_are_labelled_by_their_objective(tmp_path):
    for s in range(2):
        make_run(tmp_path, "exp", f"r{s}", s, [0.1, 0.09, 0.08, 0.07, 0.06, 0.05], started=s,
                 objectives=["ce", "ban", "cwtm", "dkpp", "ban+l", "ls"], teachers=[None, 0, 1, 2, 3, None])
    (e,) = report.collect(sorted(tmp_path.glob("exp/*")))["experiments"]
    assert list(e["columns"]) == ["Teacher", "BAN-1", "CWTM-2", "DKPP-3", "BAN+L-4", "LS-5"]
    # a student of the teacher beside a chain (Table 2's BAN column) is not read as a later generation
    make_run(tmp_path, "t2", "r0", 0, [0.1, 0.09, 0.08, 0.07, 0.075], teachers=[None, 0, 1, 2, 0])
    (e,) = report.collect(sorted(tmp_path.glob("t2/*")))["experiments"]
    assert list(e["columns"]) == ["Teacher", "BAN-1", "BAN-2", "BAN-3", "BAN-4 (of Teacher)"]


def test_the_control_is_printed_beside_its_chain_and_paired_with_it(tmp_path):
    for s in range(3):
        make_run(tmp_path, "exp", f"b{s}", s, [0.1, 0.08, 0.07], {2: 0.06 + 0.001 * s}, started=s)
        make_run(tmp_path, "exp+ce", f"c{s}", s, [0.1, 0.11, 0.09], {2: 0.07 + 0.003 * s}, started=s,
                 objectives=["ce"] * 3, teachers=[None] * 3)
    make_run(tmp_path, "zzz", "z", 0, [0.3], started=9)
    rep = report.collect(sorted(tmp_path.glob("*/*")))
    assert [(e["name"], e["control"]) for e in rep["experiments"]] == [
        ("exp", False), ("exp+ce", True), ("zzz", False)]
    chain, control = rep["experiments"][:2]
    assert list(control["columns"]) == ["Teacher", "CE-1", "CE-2", "Ens*2"]
    assert control["control_of"] == "exp"
    vs = chain["columns"]["Ens*2"]["vs_control"]
    assert vs["mean"] == pytest.approx(statistics.fmean([-0.01, -0.012, -0.014])) and vs["n"] == 3
    text = report.to_text(rep)
    assert "exp+ce (independent CE control)" in text and "Δ vs independent CE [95% t CI, seeds]" in text
    # BAN-k is paired with CE-k (an independent CE model of another seed), Ens*k with the CE ensemble
    assert chain["columns"]["BAN-1"]["control_column"] == "CE-1"
    assert chain["columns"]["BAN-2"]["vs_control"]["mean"] == pytest.approx(0.07 - 0.09)
    assert chain["columns"]["Teacher"].get("vs_control") is None
    assert "BAN-1 (vs CE-1)" in text and "BAN-2 (vs CE-2)" in text


def test_cli_formats_carry_the_numbers_and_the_notes(tmp_path):
    runs_dir = tmp_path / "runs"
    for s in range(3):
        make_run(runs_dir, "exp", f"r{s}", s, [0.1 + 0.01 * s, 0.09], {1: 0.085}, started=s)
    make_run(runs_dir, "exp", "f", 3, [0.5], status="cancelled", started=9)
    md = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "md"])
    assert md.exit_code == 0, md.output
    assert "| exp |" in md.output and "11.00 ± 1.00" in md.output
    assert "- left out exp/f (seed 3): ended cancelled" in md.output
    csv_out = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "csv"])
    assert csv_out.exit_code == 0
    lines = csv_out.stdout.splitlines()
    assert lines[0].startswith("experiment,config,control,metric,column,n,mean,std,vs_teacher")
    assert lines[1].split(",")[4:8] == ["Teacher", "3", "11.0000", "1.0000"]
    js = json.loads(runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--format", "json"]).stdout)
    assert js["dropped"][0]["reason"] == "ended cancelled"
    table = runner.invoke(app, ["report", "--runs-dir", str(runs_dir)])
    assert "Δ vs Teacher [95% t CI, seeds]" in table.output and "left out exp/f" in table.output


def curve_run(runs_dir, name, test_errs, val_errs=None):
    """One ok run of a teacher whose epoch test errors are `test_errs` (val errors `val_errs`)."""
    root = Path(runs_dir) / name / "r0"
    root.mkdir(parents=True)
    w = EventWriter(RunPaths(root).events, "r0")
    w.emit("run_start", experiment=name, config_hash="h", host="box", pid=None, pid_start=None, versions={},
           device="cpu", seed=0)
    n = len(test_errs)
    w.emit("gen_start", gen=0, role="teacher", objective="ce", model="cnn-small", params=1000, teacher=None, epochs=n)
    for i, t in enumerate(test_errs):
        val = {} if val_errs is None else {"val_err": val_errs[i], "val_loss": 1.0}
        w.emit("epoch", gen=0, epoch=i + 1, epochs=n, train_loss=0.1, train_err=0.0, test_loss=0.2, test_err=t,
               lr=0.01, seconds=1.0, samples_per_s=10.0, diagnostics={}, **val)
    val_min = {"val_err": min(val_errs)} if val_errs else {}
    w.emit("gen_end", gen=0, final={"test_err": test_errs[-1]}, val_min=val_min, checkpoint="x")
    w.emit("run_end", status="ok", error=None)
    w.close()


def test_ls_and_show_print_no_test_minimum(tmp_path):
    # test errors 30, 11 (the minimum), 25 (the last); no validation split
    curve_run(tmp_path, "noval", [0.30, 0.11, 0.25])
    # with a validation split the minimum val error is at epoch 1: test there is 17%
    curve_run(tmp_path, "val", [0.17, 0.13, 0.21], [0.05, 0.09, 0.07])
    ls = runner.invoke(app, ["ls", "--runs-dir", str(tmp_path)])
    assert ls.exit_code == 0, ls.output
    assert "last test" in ls.output and "best" not in ls.output
    assert "25.00%" in ls.output and "21.00%" in ls.output
    assert "11.00%" not in ls.output and "13.00%" not in ls.output
    show = runner.invoke(app, ["show", "noval/r0", "--runs-dir", str(tmp_path)])
    assert show.exit_code == 0, show.output
    assert "25.00%" in show.output and "11.00%" not in show.output
    assert "best" not in show.output and "min val" not in show.output
    show = runner.invoke(app, ["show", "val/r0", "--runs-dir", str(tmp_path)])
    assert "test err @ min val" in show.output and "17.00%" in show.output and "21.00%" in show.output
    assert "13.00%" not in show.output and "best" not in show.output
    follow = runner.invoke(app, ["follow", "val/r0", "--runs-dir", str(tmp_path)]).output
    assert "Teacher done test_err 21.00% min val_err 5.00%" in follow      # no "best test" at the end


CONTROL = digits_chain("x", model_options={"width": 0.25}, epochs=1, batch_size=128, optimizer={"lr": 0.05},
                       generations=3, objective="ban", ensembles=[2, 3], seeds=[0, 1], device="cpu",
                       control="independent")


def test_control_independent_adds_a_ce_chain_without_teachers():
    from engine import spec
    config = spec.loads(CONTROL)
    assert list(config.experiments) == ["x", "x+ce"]
    chain, control = config.experiments["x"], config.experiments["x+ce"]
    assert [(g.objective, g.teacher) for g in chain.generations] == [("ce", None), ("ban", 0), ("ban", 1), ("ban", 2)]
    assert [(g.objective, g.teacher, g.objective_options) for g in control.generations] == [("ce", None, {})] * 4
    assert [g.model for g in control.generations] == [g.model for g in chain.generations]
    assert [g.training for g in control.generations] == [g.training for g in chain.generations]
    assert (control.ensembles, control.seeds) == (chain.ensembles, chain.seeds)
    assert "control" not in spec.dumps_experiment(chain)        # a snapshot is one experiment
    assert list(spec.loads(spec.dumps_experiment(control)).experiments) == ["x+ce"]
    with pytest.raises(spec.SpecError, match=r"control: unknown control 'independant' \(did you mean 'independent'"):
        spec.loads(CONTROL.replace('"independent"', '"independant"'))
    # a teacher-free objective in the shorthand: k independent models, no teacher loaded
    ls = spec.loads(CONTROL.replace('objective = "ban"', 'objective = "ls"')).experiments["x"]
    assert [(g.objective, g.teacher) for g in ls.generations] == [("ce", None)] + [("ls", None)] * 3


def test_the_control_trains_k_models_from_k_distinct_seeds_with_no_teacher_term(tmp_path):
    import torch
    from engine import chain, spec
    from engine.events import read_events
    from engine.context import Context
    exp = spec.loads(CONTROL).experiments["x+ce"]
    root = tmp_path / "x+ce" / "r0"
    root.mkdir(parents=True)
    ctx = Context(exp=exp, seed=0, paths=RunPaths(root), device=torch.device("cpu"),
                  events=EventWriter(RunPaths(root).events, "r0"))
    chain.run_chain(ctx)
    events = read_events(RunPaths(root).events)
    starts = [e for e in events if e["kind"] == "gen_start"]
    assert [(e["gen"], e["objective"], e["teacher"]) for e in starts] == [(g, "ce", None) for g in range(4)]
    students = [e["seed"] for e in starts[1:]]
    assert len(set(students)) == 3 and starts[0]["seed"] not in students
    for e in (e for e in events if e["kind"] == "epoch"):
        assert set(e["diagnostics"]) == {"grad_correct", "grad_dark"}     # no teacher-confidence terms
    assert {e["k"]: e["members"] for e in events if e["kind"] == "ensemble"} == {2: [1, 2], 3: [1, 2, 3]}
    state = RunState().extend(events)
    assert report.is_control(state)


# ---- intervals that count the test set, corrected claims, power ---------------------------------

def probs_for(wrong: np.ndarray, y: np.ndarray, classes: int = 3) -> np.ndarray:
    """Probabilities whose argmax is y where wrong is False and (y + 1) % classes where it is True."""
    pred = np.where(wrong, (y + 1) % classes, y)
    p = np.full((len(y), classes), 0.1 / (classes - 1), dtype=np.float32)
    p[np.arange(len(y)), pred] = 0.9
    return p


def run_with_probs(runs_dir, name, seed, wrongs: list[np.ndarray], y: np.ndarray, ens_members=None):
    """make_run with probs/gen-k.npy of the given per-example errors and probs/labels.npy; the
    events' final errors are the means of those errors (as the engine's would be)."""
    ens = None
    probs = [probs_for(w, y) for w in wrongs]
    if ens_members:
        mean = np.mean(np.stack([probs[m].astype(np.float64) for m in ens_members]), axis=0)
        ens = {len(ens_members): float(np.mean(mean.argmax(1) != y))}
    root = make_run(runs_dir, name, f"r{seed}", seed, [float(w.mean()) for w in wrongs], ens, started=seed)
    RunPaths(root).probs.mkdir()
    for g, p in enumerate(probs):
        np.save(RunPaths(root).gen_probs(g), p)
    np.save(RunPaths(root).test_labels, y.astype(np.int64))
    return root


def independent_bootstrap(D: np.ndarray, B: int, seed: int) -> list[float]:
    """The documented draws, replicate by replicate: seeds then examples, the mean of the block."""
    rng = np.random.default_rng(seed)
    n, N = D.shape
    seed_draws, example_draws = rng.integers(0, n, (B, n)), rng.integers(0, N, (B, N))
    stats = [D[seed_draws[b]][:, example_draws[b]].mean() for b in range(B)]
    return list(np.percentile(stats, [2.5, 97.5]))


def test_bootstrap_equals_an_independent_computation_and_is_wider_when_test_examples_disagree(tmp_path):
    """BAN-1 fixes the same two test images in every seed (one seed: one of them): the seeds agree
    closely, so the t interval is narrow, but the gain rests on two of 40 images, which the
    bootstrap over test examples sees."""
    N, n = 40, 5
    y = np.arange(N) % 3
    for s in range(n):
        teacher = np.zeros(N, bool)
        teacher[[0, 1, 2, 3, 10 + s]] = True
        ban = teacher.copy()
        ban[[0] if s == 0 else [0, 1]] = False
        run_with_probs(tmp_path, "exp", s, [teacher, ban], y)
    rep = report.collect(sorted(tmp_path.glob("exp/*")), bootstrap=3000, boot_seed=7)
    d = rep["experiments"][0]["columns"]["BAN-1"]["vs_teacher"]
    D = np.zeros((n, N))
    D[:, 0] = -1
    D[1:, 1] = -1
    assert d["mean"] == pytest.approx(D.mean())
    assert d["boot_ci"] == pytest.approx(independent_bootstrap(D, 3000, 7), abs=1e-12)
    assert d["boot_ci"][1] - d["boot_ci"][0] > 2 * (d["ci"][1] - d["ci"][0])
    assert d["ci"][1] < 0 <= d["boot_ci"][1]          # the t interval excludes 0, the bootstrap does not
    assert d["verdict"] == "n.s."                       # so no verdict word, whatever p says
    text = report.to_text(rep)
    assert "t CI, seeds]" in text and "bootstrap CI, seeds×test]" in text
    assert f"[{100 * d['boot_ci'][0]:+.2f}, {100 * d['boot_ci'][1]:+.2f}]" in text
    assert "B 3000, seed 7" in text
    line = report.to_csv(rep).splitlines()[2].split(",")
    assert line[4] == "BAN-1" and float(line[11]) == pytest.approx(100 * d["boot_ci"][0], abs=1e-4)


def test_ensemble_bootstrap_uses_the_members_averaged_probabilities(tmp_path):
    N = 30
    y = np.arange(N) % 3
    rng = np.random.default_rng(1)
    wrongs = {s: [rng.random(N) < 0.3 for _ in range(3)] for s in range(4)}
    for s in range(4):
        run_with_probs(tmp_path, "exp", s, wrongs[s], y, ens_members=[1, 2])
    d = report.collect(sorted(tmp_path.glob("exp/*")), bootstrap=500, boot_seed=3)["experiments"][0]["columns"]["Ens*2"]["vs_teacher"]
    D = []
    for s in range(4):
        p = [probs_for(w, y).astype(np.float64) for w in wrongs[s]]
        D.append((((p[1] + p[2]) / 2).argmax(1) != y).astype(float) - wrongs[s][0])
    assert d["boot_ci"] == pytest.approx(independent_bootstrap(np.array(D), 500, 3), abs=1e-12)


def test_no_probabilities_no_bootstrap_and_it_says_n_a(tmp_path):
    for s in range(3):
        make_run(tmp_path, "exp", f"r{s}", s, [0.1 + 0.01 * s, 0.09], started=s)
    rep = report.collect(sorted(tmp_path.glob("exp/*")))
    assert rep["experiments"][0]["columns"]["BAN-1"]["vs_teacher"]["boot_ci"] is None
    row = next(r for r in report.rows(rep) if r["column"] == "BAN-1")
    assert row["vs_teacher_boot"] == "n/a"


def test_holm_and_the_mde_equal_hand_computations(tmp_path):
    from scipy import stats as st
    teacher = [0.100, 0.120, 0.090, 0.110, 0.105]
    gens = {1: [0.080, 0.101, 0.072, 0.093, 0.084],     # clearly lower
            2: [0.098, 0.125, 0.085, 0.113, 0.100],     # noise
            3: [0.090, 0.118, 0.083, 0.104, 0.093]}     # lower, less clearly
    ens = [0.070, 0.095, 0.066, 0.088, 0.080]
    for s in range(5):
        make_run(tmp_path, "exp", f"r{s}", s, [teacher[s]] + [gens[g][s] for g in (1, 2, 3)], {3: ens[s]}, started=s)
    (e,) = report.collect(sorted(tmp_path.glob("exp/*")))["experiments"]
    cols = ["BAN-1", "BAN-2", "BAN-3", "Ens*3"]
    raw = [st.ttest_rel(v, teacher).pvalue for v in (gens[1], gens[2], gens[3], ens)]
    order = sorted(range(4), key=lambda i: raw[i])
    adjusted, running = {}, 0.0
    for rank, i in enumerate(order):               # Holm: (m - rank) p, made monotone
        running = max(running, min(1.0, (4 - rank) * raw[i]))
        adjusted[i] = running
    for i, c in enumerate(cols):
        d = e["columns"][c]["vs_teacher"]
        assert d["p"] == pytest.approx(raw[i], rel=1e-9) and d["p_holm"] == pytest.approx(adjusted[i], rel=1e-9)
    assert e["columns"]["BAN-1"]["vs_teacher"]["verdict"] == "lower"   # adjusted p < 0.05 (no bootstrap here)
    assert e["columns"]["BAN-2"]["vs_teacher"]["verdict"] == "n.s."

    # MDE: the effect at which a two-sided paired t-test (alpha 0.05, n 5) has power 0.8, by bisection
    sd = statistics.stdev([a - b for a, b in zip(gens[2], teacher)])
    crit = st.t.ppf(0.975, 4)
    lo, hi = 0.0, 10 * sd
    for _ in range(200):
        mid = (lo + hi) / 2
        nc = mid * math.sqrt(5) / sd
        lo, hi = (mid, hi) if st.nct.sf(crit, 4, nc) + st.nct.cdf(-crit, 4, nc) < 0.8 else (lo, mid)
    assert e["columns"]["BAN-2"]["vs_teacher"]["mde"] == pytest.approx(lo, rel=1e-9)
    assert report.inference.mde(2.9, 5) == pytest.approx(4.9, abs=0.1)   # the example: sd 2.9, n 5


def test_holm_and_seeds_needed_by_hand():
    from ban_tui import inference
    assert inference.holm([0.01, 0.04, 0.03, None, 0.5]) == pytest.approx([0.04, 0.09, 0.09, None, 0.5])
    assert inference.holm([0.025] + [0.3] * 8)[0] == pytest.approx(0.225)   # repro16's Ens*3 - BAN-1
    n = inference.seeds_needed(1.0, 2.9)
    assert inference.power(1.0, 2.9, n) >= 0.8 > inference.power(1.0, 2.9, n - 1)
    assert inference.mde(2.9, n) <= 1.0 < inference.mde(2.9, n - 1)


def test_cli_effect_prints_the_seeds_needed(tmp_path):
    from ban_tui import inference
    runs_dir = tmp_path / "runs"
    teacher, ban = [0.10, 0.12, 0.09, 0.11], [0.095, 0.118, 0.080, 0.112]
    for s in range(4):
        make_run(runs_dir, "exp", f"r{s}", s, [teacher[s], ban[s]], started=s)
    res = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--effect", "0.5"])
    assert res.exit_code == 0, res.output
    sd = statistics.stdev([100 * (b - t) for b, t in zip(ban, teacher)])
    n = inference.seeds_needed(0.5, sd)
    assert f"exp BAN-1 - Teacher: sd {sd:.2f} over 4 seeds → {n} seeds to resolve 0.5 at 80 % power" in res.output
    bad = runner.invoke(app, ["report", "--runs-dir", str(runs_dir), "--effect", "-1"])
    assert bad.exit_code != 0 and "--effect" in bad.output
