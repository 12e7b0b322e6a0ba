"""Slurm through submitit, on a real one-node cluster (scripts/ci_slurm.sh starts it), reached
over the real loopback sshd (tests/sshd.py) like any login node; plus the engine's preemption
signal and the `slurm` host table, which need no cluster.

The cluster test submits a two-chain digits study with `ban run --host`, signals one job the way
Slurm does before a time limit (SIGUSR2 to the job's steps), and checks that the chain
checkpoints, is requeued, resumes from last.pt and ends with the same numbers as the chain that
was left alone.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.events import read_events
from engine.spec import SpecError, loads
from helpers import BIN, cli_env, digits_chain, held, hold, loop_host, wait_until
from sshd import sshd  # noqa: F401  (the fixture; tests/ is on sys.path)


def env() -> dict:
    """Read when used: the sshd fixture sets BAN_SSH_CONFIG."""
    return cli_env(PYTHONUNBUFFERED="1")


def chain(name: str) -> str:
    return digits_chain(name, epochs=2, batch_size=64, generations=2, ensembles=[1], seeds=[4], device="cpu")


def cluster_host(workdir) -> str:
    """The one-node cluster, its login node the loopback sshd."""
    return loop_host(workdir, name="cluster",
                     slurm={"time": "20:00", "gpus_per_job": 0, "cpus_per_job": 1, "signal_delay_s": 60})


def wait_for(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what, step=0.5)


def events(run_dir: Path) -> list[dict]:
    return read_events(run_dir / "events.jsonl") if (run_dir / "events.jsonl").exists() else []


def ends(run_dir: Path) -> list[tuple]:
    return [(e["kind"], e.get("status") or e.get("resumed")) for e in events(run_dir)
            if e["kind"] in ("run_start", "run_end")]


def numbers(run_dir: Path) -> dict:
    """What a chain computed: every generation's final metrics and validation minima, the ensembles."""
    res = json.loads((run_dir / "results.json").read_text())
    return {"generations": [(g["gen"], g["final"], g["val_min"]) for g in res["generations"]],
            "ensembles": res["ensembles"]}


# ---- no cluster needed ------------------------------------------------------------------------

@pytest.mark.timeout(1200)   # two short chains' worth of CPU time on a shared machine
def test_sigusr2_ends_the_run_preempted_and_resume_finishes_it(tmp_path):
    (tmp_path / "c.toml").write_text(chain("pre"))
    gate = hold(tmp_path / "runs" / "pre")   # running (held after its first epoch) until signalled
    argv = [sys.executable, "-m", "engine", "run", "c.toml", "--experiment", "pre", "--runs-dir", "runs",
            "--run-id", "r1"]
    with open(tmp_path / "err.log", "wb") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=err)
    root = tmp_path / "runs" / "pre" / "r1"
    wait_for(lambda: held(root) or proc.poll() is not None, 600, "the run held after its first epoch")
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(300) == 0, (tmp_path / "err.log").read_text()
    assert ends(root) == [("run_start", False), ("run_end", "preempted")]
    assert (root / "checkpoints" / "last.pt").exists()
    gate.unlink()
    done = subprocess.run([sys.executable, "-m", "engine", "resume", str(root)], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert ends(root) == [("run_start", False), ("run_end", "preempted"), ("run_start", True), ("run_end", "ok")]


def test_slurm_host_table_is_validated_with_file_and_line():
    base = '[[experiment]]\nname = "a"\n\n[hosts.c]\nssh = "login"\n'
    host = loads(base + 'slurm = { partition = "gpu", time = "1-02:03:04", gpus_per_job = 2 }\n').hosts["c"]
    assert (host.slurm.partition, host.slurm.time, host.slurm.gpus_per_job) == ("gpu", 26 * 60 + 4, 2)
    assert loads(base + 'slurm = { time = 90 }\n').hosts["c"].slurm.time == 90
    assert loads(base).hosts["c"].slurm is None
    for bad, expected in [('slurm = { partiton = "gpu" }', r"f.toml:6:\d+: hosts.c.slurm.partiton: unknown key \(did you mean 'partition'\?\)"),
                          ('slurm = { time = "4h" }', r"f.toml:6:\d+: hosts.c.slurm.time: expected a Slurm time like \"4:00:00\""),
                          ('slurm = { gpus_per_job = -1 }', r"f.toml:6:\d+: hosts.c.slurm.gpus_per_job: expected an integer >= 0, found -1"),
                          ('slurm = "gpu"', r"f.toml:6:\d+: hosts.c.slurm: expected a table, found string 'gpu'"),
                          ('slurm = { setup = "module load cuda" }', r"hosts.c.slurm.setup: expected an array of strings")]:
        with pytest.raises(SpecError, match=expected):
            loads(base + bad + "\n", "f.toml")


# ---- a real cluster ---------------------------------------------------------------------------

def cluster_or_skip() -> None:
    if not shutil.which("sinfo"):
        pytest.skip("sinfo not found: Slurm is not installed (scripts/ci_slurm.sh installs and starts a one-node cluster)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        pytest.skip("submitit is not installed: pip install -e '.[slurm]'")
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#").startswith(("idle", "mix", "alloc")) for s in states):
        why = proc.stderr.strip() or f"node states {states or 'none'}"
        pytest.skip(f"the Slurm cluster is down ({why}): run scripts/ci_slurm.sh")


def scontrol(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)


def job_state(job: str) -> str:
    m = re.search(r"JobState=(\w+)", scontrol("show", "job", job).stdout)
    return m.group(1) if m else ""


@pytest.mark.timeout(1800)
def test_two_chains_through_submitit_one_preempted_resumes_to_the_same_numbers(sshd, tmp_path):
    cluster_or_skip()
    (tmp_path / "study.toml").write_text(chain("left-alone") + chain("signalled")
                                         + cluster_host(sshd.workdir))
    gate = hold(sshd.workdir / "runs" / "signalled")   # running (held) in its job until signalled
    out = open(tmp_path / "ban-run.log", "w+")
    launcher = subprocess.Popen([str(BIN / "ban"), "run", "study.toml", "--all", "--host", "cluster"], cwd=tmp_path,
                                env=env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        runs = sshd.workdir / "runs"
        found = wait_for(lambda: next(iter((runs / "signalled").glob("*/slurm_job")), None) or launcher.poll() is not None,
                         300, "the submission")
        assert found is not True, (out.seek(0), out.read())[1]
        signalled = found.parent
        alone = next((runs / "left-alone").glob("*/slurm_job")).parent
        job = (signalled / "slurm_job").read_text().strip()
        assert re.fullmatch(r"\d+_[01]", job), job          # one job array for the two chains
        wait_for(lambda: held(signalled) or launcher.poll() is not None, 900, "the run held in its job")
        # What Slurm does `signal_delay_s` before the time limit: SIGUSR2 to the job's steps.
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        wait_for(lambda: ("run_end", "preempted") in ends(signalled), 300, "run_end preempted")
        state = wait_for(lambda: job_state(job) in ("PENDING", "RUNNING") and job_state(job), 120,
                         "the job back in the queue")
        listed = subprocess.run([str(BIN / "ban"), "ls", "--host", "cluster", "--config", "study.toml"], cwd=tmp_path,
                                env=env(), capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        row = next(ln for ln in listed.stdout.splitlines() if signalled.name in ln)
        assert job in row and (("pending" in row) if state == "PENDING" else ("running" in row))
        gate.unlink()   # until now a requeued job that already runs is held again, so it is still running
        # A requeued job waits out a begin time set by slurmctld; start it now (what an admin may do).
        if state == "PENDING":
            scontrol("update", f"JobId={job}", "StartTime=now")
        assert launcher.wait(900) == 0, (out.seek(0), out.read())[1]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    out.seek(0)
    said = out.read()
    assert re.search(rf"submitted signalled/{signalled.name} as Slurm job {job} in cluster:{re.escape(str(signalled))}", said)
    assert ends(alone) == [("run_start", False), ("run_end", "ok")]
    assert ends(signalled) == [("run_start", False), ("run_end", "preempted"), ("run_start", True), ("run_end", "ok")]
    assert numbers(signalled) == numbers(alone)


@pytest.mark.timeout(900)
async def test_a_launch_from_the_tui_to_a_slurm_host_submits_a_job_and_follows_it(sshd, tmp_path, monkeypatch):
    cluster_or_skip()
    from ban_tui.app import BanApp
    from ban_tui.slurm import SlurmSource
    from test_tui_support import built, wait_for as pilot_wait
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))   # no user hosts file
    config = tmp_path / "experiments.toml"
    config.write_text(digits_chain("far", epochs=1, batch_size=64, generations=1, seeds=[2], device="cpu",
                                   host="cluster") + cluster_host(sshd.workdir))
    app = BanApp(config, tmp_path / "runs", poll_interval=0.2)
    notes = []
    app.notify = lambda message, **kw: notes.append(str(message))
    async with app.run_test(size=(140, 40)) as pilot:
        await built(pilot)
        await pilot.press("ctrl+r")                                    # save (nothing to save) and launch
        model = await pilot_wait(pilot, lambda: next(iter(app.watcher.models.values()), None), 300)
        assert isinstance(model.source, SlurmSource) and model.source.host.name == "cluster"
        root = Path(model.source.run_dir)
        job = (root / "slurm_job").read_text().strip()
        await pilot_wait(pilot, lambda: model.status() == "ok", 600)   # followed over ssh to its end
        assert any(f"as Slurm job {job} on cluster" in n for n in notes), notes
    assert ends(root) == [("run_start", False), ("run_end", "ok")]
