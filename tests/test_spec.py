"""The config schema: valid files resolve as documented, broken ones report every problem."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import spec

BROKEN = sorted((Path(__file__).parent / "broken_configs").glob("*.toml"))
ROOT = Path(__file__).resolve().parents[1]


def expectations(path: Path):
    text = path.read_text()
    return (re.findall(r"^# expect: (.*)$", text, re.M),
            [int(n) for n in re.findall(r"^# expect-line: (\d+)$", text, re.M)])


def test_corpus_is_large_enough():
    assert len(BROKEN) >= 25


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_config_names_the_problem(path):
    texts, lines = expectations(path)
    assert texts, f"{path.name} states no expectation"
    with pytest.raises(spec.SpecError) as info:
        spec.load(path)
    message = str(info.value)
    for t in texts:
        assert t in message, message
    for p in info.value.problems:
        assert p.file == str(path)
        assert p.line is not None, f"no line number for {p}"
    for n in lines:
        assert any(p.line == n for p in info.value.problems), message


def test_every_problem_is_reported_at_once(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('[[experiment]]\nname = "a"\nepochs = -1\nmodle = "x"\noptimizer = { lr = "fast" }\n')
    with pytest.raises(spec.SpecError) as info:
        spec.load(f)
    keys = [p.key for p in info.value.problems]
    assert keys == ["experiment[0].modle", "experiment[0].epochs", "experiment[0].optimizer.lr"]
    assert [p.line for p in info.value.problems] == [4, 3, 5]


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(spec.SpecError, match="cannot read the file"):
        spec.load(tmp_path / "nope.toml")


def test_shorthand_resolves_to_teacher_and_students():
    cfg = spec.loads('[defaults]\nepochs = 4\n[[experiment]]\nname = "q"\ngenerations = 3\n'
                     'objective = "ban+l"\nensembles = [2, 3]\nseeds = [0, 1]\n'
                     'optimizer = { lr = 0.05 }\n')
    exp = cfg.experiments["q"]
    assert [g.objective for g in exp.generations] == ["ce", "ban+l", "ban+l", "ban+l"]
    assert [g.teacher for g in exp.generations] == [None, 0, 1, 2]
    assert [g.role for g in exp.generations] == ["teacher", "student", "student", "student"]
    assert all(g.training.epochs == 4 and g.training.optimizer.lr == 0.05 for g in exp.generations)
    assert exp.ensembles == [2, 3] and exp.seeds == [0, 1]


def test_explicit_chain_with_overrides_and_cross_architecture():
    cfg = spec.loads('''
[[experiment]]
name = "x"
model = "wrn-16-2"
epochs = 10
dataset = { name = "npz", root = "data" }
[[experiment.generation]]
objective = "ce"
[[experiment.generation]]
objective = "cwtm"
model = "densenet-bc-40-12"
epochs = 20
optimizer = { lr = 0.2 }
[[experiment.generation]]
objective = "dkpp"
teacher = 0
inherit = ["stem", "head"]
freeze = ["head"]
''')
    g = cfg.experiments["x"].generations
    assert [x.model for x in g] == ["wrn-16-2", "densenet-bc-40-12", "wrn-16-2"]
    assert [x.training.epochs for x in g] == [10, 20, 10]
    assert g[1].training.optimizer.lr == 0.2 and g[0].training.optimizer.lr == 0.1
    assert g[2].teacher == 0 and g[2].inherit == ["stem", "head"] and g[2].freeze == ["head"]


def test_snapshot_round_trips():
    cfg = spec.loads('[[experiment]]\nname = "q"\ngenerations = 2\nensembles = [2]\n'
                     'schedule = { name = "multistep", milestones = [2, 3] }\n'
                     'objective_options = { temperature = 2.0 }\n', path="exp.toml")
    exp = cfg.experiments["q"]
    again = spec.loads(spec.dumps_experiment(exp)).experiments["q"]
    assert again.to_dict() == exp.to_dict()
    assert again.config_hash() == exp.config_hash()
    assert again.generations[1].objective_options == {"temperature": 2.0}


def test_shipped_experiments_file_is_valid():
    cfg = spec.load(ROOT / "experiments.toml")
    assert "quickstart" in cfg.experiments
    q = cfg.experiments["quickstart"]
    assert q.dataset.name == "digits" and len(q.generations) == 4 and q.ensembles == [2, 3]


def test_spec_imports_neither_torch_nor_textual():
    code = ("import sys, engine.spec, engine.spec.checks, engine.events, engine.runs, engine.catalog\n"
            "engine.spec.load(sys.argv[1])\n"
            "bad = [m for m in ('torch', 'textual') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "experiments.toml")], check=True, cwd=ROOT)


def test_spec_package_has_no_import_cycle():
    """Every import (top level or inside a function) of an engine/spec module goes down the
    order schema < locate < checks < loading; none imports the package itself."""
    order = ["schema", "locate", "checks", "loading"]
    pkg = ROOT / "engine" / "spec"
    assert sorted(p.stem for p in pkg.glob("*.py")) == sorted(order + ["__init__"])
    for name in order:
        tree = ast.parse((pkg / f"{name}.py").read_text())
        targets = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets.append(node.module)
                if node.module == "engine":
                    targets += [f"engine.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
        for t in targets:
            assert t != "engine.spec", f"{name}.py imports the package engine.spec"
            if t.startswith("engine.spec."):
                assert order.index(t.split(".")[2]) < order.index(name), f"{name}.py imports {t}"
    assert not (ROOT / "engine" / "spec.py").exists() and not (ROOT / "engine" / "spec_check.py").exists()


def test_host_may_come_from_outside_the_file(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('[[experiment]]\nname = "a"\nhost = "box"\n')
    with pytest.raises(spec.SpecError, match="found 'box'"):
        spec.load(f)
    assert spec.load(f, extra_hosts={"box"}).experiments["a"].host == "box"
