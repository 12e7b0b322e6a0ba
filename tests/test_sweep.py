"""Sweeps in experiments.toml: the grid expands to named experiments, bad sweeps name file:line,
and `ban validate` / `ban run --dry-run / --only / --yes` work on the expanded names."""
from __future__ import annotations


import pytest

from engine.runs import check_name
from engine.spec import SpecError, dumps_experiment, loads
from engine.spec.checks import EXPERIMENT_KEYS

import helpers

GRID = """\
[defaults]
epochs = 2

[[experiment]]
name = "t2-90-60"
model = "cnn-small"
generations = 2
objective_options = { teacher_weight = 0.5 }
sweep = { objective = ["ban", "ban+l", "cwtm"], "objective_options.temperature" = [1.0, 2.0] }

[[experiment]]
name = "plain"
"""


def ban(*args, cwd):
    return helpers.ban(*args, cwd=cwd, timeout=60)


def test_three_objectives_by_two_temperatures_give_six_named_experiments():
    config = loads(GRID.replace('objective_options = { teacher_weight = 0.5 }\n', ""), "grid.toml")
    names = [n for n in config.experiments if n != "plain"]
    assert names == [f"t2-90-60.objective={o},temperature={t}" for o in ("ban", "ban+l", "cwtm") for t in (1, 2)]
    assert list(config.sweeps) == ["t2-90-60"] and list(config.sweeps["t2-90-60"]) == names
    for name in names:
        check_name(name)   # a directory of the runs layout
        exp = config.experiments[name]
        cell = config.sweeps["t2-90-60"][name]
        students = exp.generations[1:]
        assert [g.objective for g in exp.generations] == ["ce", cell["objective"], cell["objective"]]
        assert exp.generations[0].objective_options == {}
        # cwtm takes no temperature: the option is set only where the objective takes it
        expected = {} if cell["objective"] == "cwtm" else {"temperature": cell["objective_options.temperature"]}
        assert all(g.objective_options == expected for g in students), (name, students)
        assert all(g.training.epochs == 2 for g in exp.generations)        # defaults still apply
        again = loads(dumps_experiment(exp), "snapshot.toml").experiments   # a normal experiment
        assert list(again) == [name] and again[name].generations[1].objective_options == expected
    assert len({config.experiments[n].config_hash() for n in names}) == 6
    assert config.experiments["plain"].generations[1].objective == "ban"


def test_sweeping_optimizer_and_a_table_valued_key():
    config = loads('[[experiment]]\nname = "e"\n[experiment.sweep]\n"optimizer.lr" = [0.1, 0.01]\n'
                   'schedule = ["cosine", { name = "multistep", milestones = [1] }]\n', "s.toml")
    assert list(config.experiments) == ["e.lr=0.1,schedule=cosine", "e.lr=0.1,schedule=name=multistep+milestones=1",
                                        "e.lr=0.01,schedule=cosine", "e.lr=0.01,schedule=name=multistep+milestones=1"]
    lrs = [e.generations[0].training.optimizer.lr for e in config.experiments.values()]
    schedules = [e.generations[0].training.schedule.name for e in config.experiments.values()]
    assert lrs == [0.1, 0.1, 0.01, 0.01] and schedules == ["cosine", "multistep"] * 2


BAD = [
    # (sweep lines, line of the problem, column, words of the message)
    ('sweep = { objective = "ban" }', 3, 11, "expected an array of values to sweep, found string 'ban'"),
    ('sweep = { objectiv = ["ban"] }', 3, 11, "unknown key (did you mean 'objective'?)"),
    ('sweep = { "optimizer.lrr" = [0.1] }', 3, 11, "unknown key 'lrr' of optimizer (did you mean 'lr'?)"),
    ('sweep = { seeds = [[0], [1]] }', 3, 11, "cannot be swept (seeds is already a list"),
    ('[experiment.sweep]\nobjective = []', 4, 1, "expected a non-empty array of values to sweep, found an empty array"),
    ('sweep = { objective_options = [{ temperature = 1.0 }, 2.0] }', 3, 55, "expected a table (objective_options takes a table"),
    ('sweep = { objective_options = { temperature = [1.0] } }', 3, 11,
     'found a table (to sweep a key of objective_options, write "objective_options.temperature" = [...])'),
    ('sweep = { objective = ["ban",\n    "nope"] }', 4, 5, "unknown objective 'nope'"),
    ('sweep = { "objective_options.temperature" = [1.0, -2.0] }', 3, 51, "expected a number > 0, found -2.0"),
    ('sweep = ["ban"]', 3, 1, "expected a table of arrays"),
]


@pytest.mark.parametrize("lines,line,col,words", BAD)
def test_bad_sweeps_name_file_line_of_the_entry(lines, line, col, words):
    with pytest.raises(SpecError) as err:
        loads(f'[[experiment]]\nname = "e"\n{lines}\n', "bad.toml")
    assert [(p.line, p.col) for p in err.value.problems] == [(line, col)], str(err.value)
    assert words in str(err.value)


def test_ban_validate_exits_2_naming_each_bad_sweep_by_file_line(tmp_path):
    """A non-list, an unknown key, an empty list, a list where the key takes a table."""
    (tmp_path / "bad.toml").write_text(
        '[[experiment]]\nname = "a"\nsweep = { objective = "ban" }\n\n'
        '[[experiment]]\nname = "b"\nsweep = { objectiv = ["ban"] }\n\n'
        '[[experiment]]\nname = "c"\nsweep = { "optimizer.lr" = [] }\n\n'
        '[[experiment]]\nname = "d"\nsweep = { optimizer = [0.1] }\n')
    proc = ban("validate", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "bad.toml:3:11: experiment[0].sweep.objective: expected an array of values to sweep, found string 'ban'",
        "bad.toml:7:11: experiment[1].sweep.objectiv: unknown key (did you mean 'objective'?); expected one of: "
        + ", ".join(k for k in EXPERIMENT_KEYS if k not in ("name", "generation", "seeds"))
        + " or dataset.KEY, optimizer.KEY, schedule.KEY, objective_options.KEY, model_options.KEY",
        "bad.toml:11:11: experiment[2].sweep.optimizer.lr: expected a non-empty array of values to sweep, found an empty array",
        "bad.toml:15:24: experiment[3].sweep.optimizer[0]: expected a table (optimizer takes a table; to sweep one of "
        'its keys write "optimizer.KEY" = [...]), found number 0.1',
        "ban: bad.toml: 4 problems; nothing launched"]


def test_validate_and_dry_run_print_the_grid_and_only_takes_globs(tmp_path):
    (tmp_path / "grid.toml").write_text(GRID)
    valid = ban("validate", "grid.toml", cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert "sweep t2-90-60: 6 experiments (3 objective x 2 objective_options.temperature)" in valid.stdout
    assert "t2-90-60.objective=cwtm,temperature=2   cwtm       n/a" in valid.stdout
    dry = ban("run", "grid.toml", "--dry-run", "--only", "t2-90-60.objective=ban+l*", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "6 experiments (3 objective x 2 objective_options.temperature), 2 picked" in dry.stdout
    would = [ln for ln in dry.stdout.splitlines() if ln.startswith("would run:")]
    assert len(would) == 2 and all("--experiment t2-90-60.objective=ban+l,temperature=" in ln for ln in would)
    default = ban("run", "grid.toml", "--dry-run", cwd=tmp_path)    # the first experiment: its whole sweep
    assert default.stdout.count("would run:") == 6
    none = ban("run", "grid.toml", "--dry-run", "--only", "t2-90-60.objective=dkpp*", cwd=tmp_path)
    assert none.returncode == 2 and "no experiment 't2-90-60.objective=dkpp*'" in none.stderr


def test_a_sweep_of_more_than_1000_cells_needs_yes(tmp_path):
    (tmp_path / "big.toml").write_text('[[experiment]]\nname = "big"\nsweep = { "optimizer.lr" = ['
                                       + ", ".join(f"0.{i + 1:04d}" for i in range(1001)) + '] }\n')
    big = ban("run", "big.toml", "--runs-dir", "runs", cwd=tmp_path)
    assert big.returncode == 2 and "sweep big has 1,001 cells to run (more than 1,000)" in big.stderr
    assert "--yes" in big.stderr and not (tmp_path / "runs").exists()      # nothing launched
    assert ban("run", "big.toml", "--dry-run", "--only", "big.lr=0.000[1-9]", cwd=tmp_path).stdout.count("would run:") == 9
