"""The committed parameter counts of `ban models` (engine.param_counts) against the real
builders, and `ban models` listing the registry without importing torch."""
import subprocess
import sys

import pytest

from engine import param_counts


def test_committed_param_counts_match_the_builders():
    """Every listed name at its default size, rebuilt (meta device): regenerate the table with
    `python -m engine.param_counts` when a builder changes a count."""
    from engine import models
    assert param_counts.generate() == param_counts.COUNTS
    assert all(param_counts.cached(n, param_counts.default_classes(n)) is not None for n in models.names())


def test_ban_models_lists_the_registry_without_torch():
    code = ("import sys; from typer.testing import CliRunner; from ban_tui.cli import app; "
            "r = CliRunner().invoke(app, ['models']); assert r.exit_code == 0, r.output; "
            "print(r.output); print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[-1] == "[]"
    rows = {line.split()[0]: line.split() for line in lines[:-1] if line.strip()}
    assert set(param_counts.listed()) <= set(rows)
    assert rows["wrn-28-10"][2:5] == ["10", "36.48M", "36.00M"]
    assert rows["lstm-tied-2x1500"][2:4] == ["10000", f"{param_counts.COUNTS[('lstm-tied-2x1500', 10000, 3)] / 1e6:.2f}M"]


@pytest.mark.parametrize("args", [["wrn-28-3"], ["wrn-28-10", "--classes", "100"], ["cnn-small", "--in-channels", "1"]])
def test_ban_models_builds_a_size_outside_the_table(args):
    """A name or a size the table has not: counted by the builders (torch imported then)."""
    from typer.testing import CliRunner
    from ban_tui.cli import app
    from engine import models
    result = CliRunner().invoke(app, ["models", *args])
    assert result.exit_code == 0, result.output
    name = args[0]
    classes = int(args[args.index("--classes") + 1]) if "--classes" in args else 10
    channels = int(args[args.index("--in-channels") + 1]) if "--in-channels" in args else 3
    n = models.param_count(name, classes, channels)
    row = next(line.split() for line in result.output.splitlines() if line.startswith(name))
    assert row[3] == (f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k")


def test_every_preset_model_is_within_5_percent_of_the_papers_count_or_its_description_says_why():
    """Every model a shipped preset trains that the paper counts: ours within 5 % (at the paper's
    class count), or the preset's description carries deviation_note (ours, the paper's, the
    deviation and why); `ban models` prints the deviation beside the paper's count."""
    import tomllib
    from pathlib import Path
    from engine import spec
    root = Path(__file__).resolve().parents[1]
    presets = spec.load(root / "experiments.toml").experiments
    descriptions = {e["name"]: e.get("description", "") for e in tomllib.loads((root / "experiments.toml").read_text())["experiment"]}
    checked, documented = set(), set()
    for name, exp in presets.items():
        if name.endswith("+ce"):        # a control: its preset's description covers it
            name = name.removesuffix("+ce")
        for g in exp.generations:
            dev = param_counts.deviation(g.model)
            if dev is None:
                continue
            checked.add(g.model)
            ours = param_counts.COUNTS[(g.model, param_counts.PAPER_NUM_CLASSES[g.model], 3)]
            assert dev == pytest.approx(ours / (param_counts.PAPER_PARAMS[g.model] * 1e6) - 1)
            if abs(dev) > 0.05:
                note = param_counts.deviation_note(g.model)
                assert note and f"{100 * dev:+.1f} %" in note and param_counts.DEVIATION_WHY[g.model] in note
                assert note in descriptions[name], (name, g.model)
                documented.add(g.model)
            else:
                assert param_counts.deviation_note(g.model) is None
    assert {"wrn-28-1", "wrn-28-2", "wrn-28-5", "wrn-28-10", "densenet-bc-90-60-comp1.5", "ban-preresnet-14-0.5"} <= checked
    assert "densenet-bc-112-33" in documented and "wrn-28-10" not in documented
    from typer.testing import CliRunner
    from ban_tui.cli import app
    out = CliRunner().invoke(app, ["models", "densenet-bc-112-33", "wrn-28-1"]).output
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["densenet-bc-112-33"][4:6] == ["6.30M", "+10.9%"] and rows["wrn-28-1"][4:6] == ["0.38M", "-2.8%"]
    assert param_counts.deviation_note("densenet-bc-112-33") in out
