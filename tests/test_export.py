"""`ban export --tensorboard` on the recorded runs: the scalars read back with TensorBoard's own
event reader (EventAccumulator), one log directory per generation, a second export replacing
the first, and the clear errors."""
import sys

import pytest
from typer.testing import CliRunner

from ban_tui.cli import app
from engine.events import read_events
from test_tui_support import FIXTURES, OK, copy_runs

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

runner = CliRunner()


def scalars(logdir, tag):
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars(tag)], acc.Tags()["scalars"]


def test_tensorboard_export_reads_back_every_epoch(tmp_path):
    runs, tb = copy_runs(tmp_path), tmp_path / "tb"
    result = runner.invoke(app, ["export", OK, "--tensorboard", str(tb), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {tb}" in result.output
    run = tb / OK
    assert sorted(p.name for p in run.iterdir()) == ["BAN-1", "BAN-2", "Teacher", "ensembles"]
    epochs = [e for e in read_events(FIXTURES / OK / "events.jsonl") if e["kind"] == "epoch"]
    for gen, label, offset in ((0, "Teacher", 0), (1, "BAN-1", 2), (2, "BAN-2", 4)):
        mine = [e for e in epochs if e["gen"] == gen]
        points, tags = scalars(run / label, "test_err")
        assert [s for s, _ in points] == [offset + e["epoch"] for e in mine]        # the chain's epoch
        assert [v for _, v in points] == pytest.approx([e["test_err"] for e in mine], rel=1e-6)
        assert {"train_loss", "test_loss", "lr", "diagnostics/grad_correct", "diagnostics/grad_dark"} <= set(tags)
        grad, _ = scalars(run / label, "diagnostics/grad_dark")
        assert [v for _, v in grad] == pytest.approx([e["diagnostics"]["grad_dark"] for e in mine], rel=1e-6)
    ens = [e for e in read_events(FIXTURES / OK / "events.jsonl") if e["kind"] == "ensemble"]
    points, _ = scalars(run / "ensembles", "Ens*2/test_err")
    assert points == [(6, pytest.approx(ens[0]["test_err"], rel=1e-6))]

    # again: the earlier export is replaced, not doubled
    assert runner.invoke(app, ["export", OK, "--tensorboard", str(tb), "--runs-dir", str(runs)]).exit_code == 0
    assert len(list((run / "Teacher").iterdir())) == 1
    assert len(scalars(run / "Teacher", "test_err")[0]) == 2
    assert not [p for p in (tb / "tiny").iterdir() if p.name.startswith(".")]


def test_export_errors_are_clear(tmp_path, monkeypatch):
    runs, tb = copy_runs(tmp_path), tmp_path / "tb"
    result = runner.invoke(app, ["export", OK, "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "--tensorboard DIR" in result.output
    result = runner.invoke(app, ["export", "broken-data", "--tensorboard", str(tb), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "no epoch finished yet" in result.output
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)       # import tensorboard... -> ImportError
    result = runner.invoke(app, ["export", OK, "--tensorboard", str(tb), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "pip install 'ban[export]'" in result.output
    assert not (tb / OK).exists()
