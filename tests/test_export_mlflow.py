"""`ban export --mlflow` on the recorded runs: read back with MLflow's own client from the sqlite
store it wrote (one run per chain, one nested run per generation, the chain's config as params),
a second export replacing the first, and the clear errors."""
import sys

import pytest
from typer.testing import CliRunner

from ban_tui.cli import app
from engine import spec
from engine.events import read_events
from test_tui_support import CONFIG, FIXTURES, OK, copy_runs

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

runner = CliRunner()


def active_runs(uri):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id])


def test_mlflow_export_reads_back_every_epoch_and_the_config(tmp_path):
    runs, store = copy_runs(tmp_path), tmp_path / "mlflow"
    exp = spec.loads(CONFIG.replace("epochs = 2", "epochs = 2\noptimizer = { lr = 0.05 }")).experiments["tiny"]
    (runs / OK / "experiment.toml").write_text(spec.dumps_experiment(exp))
    result = runner.invoke(app, ["export", OK, "--mlflow", str(store), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{store.resolve()}/mlflow.db"
    assert f"mlflow ui --backend-store-uri {uri}" in result.output

    client, found = active_runs(uri)
    chain = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(chain) == 1 and chain[0].info.run_name == OK.split("/")[1] and chain[0].info.status == "FINISHED"
    chain = chain[0]
    assert chain.data.params["BAN-1 epochs"] == "2" and chain.data.params["BAN-1 optimizer.lr"] == "0.05"
    assert chain.data.params["dataset.name"] == "digits"
    assert chain.data.tags["ban.run"] == OK
    events = read_events(FIXTURES / OK / "events.jsonl")
    ens = [e for e in events if e["kind"] == "ensemble"]
    assert [(m.step, m.value) for m in client.get_metric_history(chain.info.run_id, "Ens-2/test_err")] == [
        (6, pytest.approx(ens[0]["test_err"]))]

    gens = {r.info.run_name: r for r in found if r.data.tags.get("mlflow.parentRunId") == chain.info.run_id}
    assert sorted(gens) == ["BAN-1", "BAN-2", "Teacher"]
    epochs = [e for e in events if e["kind"] == "epoch"]
    for gen, label, offset, objective, teacher in ((0, "Teacher", 0, "ce", ""), (1, "BAN-1", 2, "ban", "Teacher"),
                                                   (2, "BAN-2", 4, "ban", "BAN-1")):
        run, mine = gens[label], [e for e in epochs if e["gen"] == gen]
        assert run.data.params["objective"] == objective and run.data.params["teacher"] == teacher
        history = sorted(client.get_metric_history(run.info.run_id, "test_err"), key=lambda m: m.step)
        assert [m.step for m in history] == [offset + e["epoch"] for e in mine]        # the chain's epoch
        assert [m.value for m in history] == pytest.approx([e["test_err"] for e in mine])
        assert [m.timestamp for m in history] == [int(e["ts"] * 1000) for e in mine]
        grad = client.get_metric_history(run.info.run_id, "diagnostics/grad_dark")
        assert sorted(m.value for m in grad) == pytest.approx(sorted(e["diagnostics"]["grad_dark"] for e in mine))

    # again: the earlier export is replaced, not doubled
    assert runner.invoke(app, ["export", OK, "--mlflow", uri, "--runs-dir", str(runs)]).exit_code == 0
    _, again = active_runs(uri)
    assert len(again) == 4 and not {r.info.run_id for r in again} & {r.info.run_id for r in found}


def test_mlflow_export_errors_are_clear(tmp_path, monkeypatch):
    runs, store = copy_runs(tmp_path), tmp_path / "mlflow"
    result = runner.invoke(app, ["export", "broken-data", "--mlflow", str(store), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "no epoch finished yet" in result.output
    assert not store.exists()                                 # refused before anything is written
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)       # import mlflow... -> ImportError
    result = runner.invoke(app, ["export", OK, "--mlflow", str(store), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "pip install 'ban[mlflow]'" in result.output
    assert not store.exists()
