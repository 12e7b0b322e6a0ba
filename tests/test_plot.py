"""`ban plot` on the recorded runs (real engine events): PNG, SVG and PDF figures whose axes are
labelled, the chain offsets they are drawn on, and the clear errors (bad suffix, no matplotlib)."""
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ban_tui import plot
from ban_tui.cli import app
from test_tui_support import CANCELLED, FIXTURES, OK, copy_runs

runner = CliRunner()


@pytest.fixture
def runs(tmp_path):
    return copy_runs(tmp_path)


def svg_text(path: Path) -> str:
    """Every <text> of an SVG written with svg.fonttype none (text kept as text)."""
    return " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text()))


def test_history_places_each_generation_after_the_planned_epochs_of_the_ones_before():
    h = plot.load_history(FIXTURES / OK)
    assert h.offsets() == {0: 0, 1: 2, 2: 4} and h.end() == 6
    xs, ys = h.series("test_err")[1]
    assert xs == [3, 4] and ys[-1] == pytest.approx(h.state.gens[1].test)
    assert set(h.series("grad_dark", diagnostic=True)) == {0, 1, 2}


def test_plot_writes_png_and_svg_with_labelled_axes(runs, tmp_path):
    png, svg = tmp_path / "fig" / "chain.png", tmp_path / "chain.svg"
    for out in (png, svg):
        result = runner.invoke(app, ["plot", OK, "-o", str(out), "--runs-dir", str(runs)])
        assert result.exit_code == 0, result.output
        assert f"wrote {out}" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = svg_text(svg)
    for label in ("test error (%)", "epoch (whole chain; generations marked)", "final test error (%)",
                  "loss (log scale)", "mean logit-gradient size (eq. 7)", "Teacher", "BAN-1", "BAN-2",
                  "Ens*2", "tiny/20251129-013320-s0-0k01"):
        assert label in text, label
    # integer epoch ticks on the chain axis: 0..6, never 1.5
    ticks = set(re.findall(r"\b\d+(?:\.\d+)?\b", text))
    assert {"0", "2", "4", "6"} <= ticks and "1.5" not in ticks
    assert not list(tmp_path.glob("fig/.chain.png.*"))   # no temp file left behind


def test_plot_overlays_runs_of_an_experiment_and_one_panel(runs, tmp_path):
    out = tmp_path / "loss.pdf"
    result = runner.invoke(app, ["plot", OK, CANCELLED, "-o", str(out), "--panel", "loss", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:5] == b"%PDF-"
    svg = tmp_path / "both.svg"
    assert runner.invoke(app, ["plot", "tiny", "-o", str(svg), "--panel", "curves", "--runs-dir", str(runs)]).exit_code == 0
    text = svg_text(svg)
    assert OK in text and CANCELLED in text            # the legend of the runs
    assert "loss (log scale)" not in text


def test_plot_refuses_a_bad_suffix_or_a_run_with_no_epoch(runs, tmp_path):
    result = runner.invoke(app, ["plot", OK, "-o", str(tmp_path / "fig.jpg"), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "expected a file name ending in .png, .svg, .pdf, found .jpg" in result.output
    result = runner.invoke(app, ["plot", "broken-data", "-o", str(tmp_path / "f.png"), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "nothing to draw" in result.output
    result = runner.invoke(app, ["plot", OK, "-o", str(tmp_path / "f.png"), "--panel", "lr", "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "unknown panel 'lr'" in result.output
    assert not list(tmp_path.glob("f.png*")) and not list(tmp_path.glob(".f.png*"))


def test_plot_without_matplotlib_says_how_to_install_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    result = runner.invoke(app, ["plot", OK, "-o", str(tmp_path / "f.png"), "--runs-dir", str(runs)])
    assert result.exit_code == 2
    assert "pip install 'ban[plot]'" in result.output and not (tmp_path / "f.png").exists()
