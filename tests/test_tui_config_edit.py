"""The chain form's editing logic on tomlkit documents, without the app."""
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from ban_tui import config_edit as ce
from engine import spec

ROOT = Path(__file__).resolve().parents[1]
PRESETS = (ROOT / "experiments.toml").read_text()

SMALL = """\
# my experiments
[defaults]
runs_dir = "runs"
optimizer = { lr = 0.2, momentum = 0.8, nesterov = false, weight_decay = 1e-3 }

[[experiment]]
name = "a"          # the first one
dataset = { name = "digits" }
model = "cnn-small"
epochs = 4
generations = 2
objective = "ban"
ensembles = [2]

# --- the explicit one
[[experiment]]
name = "b"
[[experiment.generation]]
objective = "ce"
[[experiment.generation]]
objective = "ban"
epochs = 7          # a per-generation override
[[experiment.generation]]
objective = "dkpp"
"""


def resolved(text, name):
    return spec.loads(text).experiments[name]


def test_unchanged_drafts_leave_every_preset_byte_identical():
    doc = ce.parse(PRESETS)
    names = ce.experiment_names(doc)
    assert "quickstart" in names and len(names) > 5
    for name in names:
        assert ce.with_draft(PRESETS, ce.draft_of(doc, name)) == PRESETS, name


def test_draft_reads_effective_values_including_defaults():
    d = ce.draft_of(ce.parse(SMALL), "a")
    assert (d.name, d.dataset, d.epochs, d.lr, d.ensembles) == ("a", "digits", 4, 0.2, [2])
    assert [(r.objective, r.model) for r in d.rows] == [("ce", "cnn-small"), ("ban", "cnn-small"), ("ban", "cnn-small")]
    b = ce.draft_of(ce.parse(SMALL), "b")
    assert [r.objective for r in b.rows] == ["ce", "ban", "dkpp"] and [r.table for r in b.rows] == [0, 1, 2]


def test_scalar_edit_touches_only_its_line_and_keeps_comments():
    d = replace(ce.draft_of(ce.parse(SMALL), "a"), epochs=9, batch_size=32)
    text = ce.with_draft(SMALL, d)
    changed = [line for line in text.splitlines() if line not in SMALL.splitlines()]
    assert changed == ["epochs = 9", "batch_size = 32"]
    assert 'name = "a"          # the first one' in text and "# --- the explicit one" in text
    e = resolved(text, "a")
    assert e.generations[1].training.epochs == 9 and e.generations[1].training.batch_size == 32


def test_lr_over_an_inherited_optimizer_keeps_its_other_settings():
    text = ce.with_draft(SMALL, replace(ce.draft_of(ce.parse(SMALL), "a"), lr=0.01))
    opt = resolved(text, "a").generations[0].training.optimizer
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == (0.01, 0.8, False, 1e-3)


def test_cross_architecture_student_turns_the_shorthand_into_generation_tables():
    d = ce.draft_of(ce.parse(SMALL), "a")
    d = replace(d, rows=[d.rows[0], ce.GenRow("ban+l", "wrn-16-2"), d.rows[2]])
    text = ce.with_draft(SMALL, d)
    gens = resolved(text, "a").generations
    assert [(g.objective, g.model, g.teacher) for g in gens] == [
        ("ce", "cnn-small", None), ("ban+l", "wrn-16-2", 0), ("ban", "cnn-small", 1)]
    assert "generations = 2" not in text
    # the comment that introduced experiment "b" still sits right above it
    lines = text.splitlines()
    assert lines[lines.index("# --- the explicit one") + 1] == "[[experiment]]"
    assert ce.problems(text, "x.toml") == []


def test_reorder_remove_and_add_carry_each_generations_own_keys():
    doc = ce.parse(SMALL)
    d = ce.move_row(ce.draft_of(doc, "b"), 1, 1)          # dkpp before the ban (epochs = 7) student
    assert [r.objective for r in d.rows] == ["ce", "dkpp", "ban"]
    text = ce.with_draft(SMALL, d)
    gens = resolved(text, "b").generations
    assert [(g.objective, g.training.epochs) for g in gens] == [("ce", 15), ("dkpp", 15), ("ban", 7)]
    assert "# a per-generation override" in text
    d = ce.remove_row(ce.draft_of(ce.parse(text), "b"), 1)
    d = ce.add_row(d)
    d.rows[-1].objective = "cwtm"
    text = ce.with_draft(text, d)
    gens = resolved(text, "b").generations
    assert [(g.objective, g.training.epochs) for g in gens] == [("ce", 15), ("ban", 7), ("cwtm", 15)]
    assert ce.move_row(d, 0, 1) == d                     # the teacher stays generation 0
    with pytest.raises(ce.EditError, match="generation 0"):
        ce.remove_row(d, 0)


def test_new_chain_is_appended_valid_and_the_rest_is_kept():
    doc = ce.parse(SMALL)
    d = ce.new_draft(doc)
    d = replace(d, name="digits-chain", epochs=2, ensembles=[1], seeds=[0, 1])
    text = ce.with_draft(SMALL, d)
    assert text.startswith(SMALL)
    e = resolved(text, "digits-chain")
    assert [g.objective for g in e.generations] == ["ce", "ban"] and e.seeds == [0, 1] and e.ensembles == [1]
    assert ce.draft_of(ce.parse(text), "digits-chain").epochs == 2


def test_problems_are_the_validators_messages_with_lines_of_the_edited_text(tmp_path):
    d = ce.remove_row(ce.draft_of(ce.parse(SMALL), "a"), 2)        # one student left, ensembles = [2]
    text = ce.with_draft(SMALL, d)
    found = ce.problems(text, tmp_path / "e.toml")
    path = tmp_path / "e.toml"
    path.write_text(text)
    with pytest.raises(spec.SpecError) as info:
        spec.load(path)
    assert [str(p) for p in found] == [str(p) for p in info.value.problems]
    assert found[0].key == "experiment[0].ensembles" and found[0].line == text.splitlines().index("ensembles = [2]") + 1


def test_parse_int_list():
    assert ce.parse_int_list("2, 3 4", "ensembles") == [2, 3, 4]
    with pytest.raises(ce.EditError, match="ensembles: expected whole numbers.*'x'"):
        ce.parse_int_list("2, x", "ensembles")


def test_save_replaces_the_file_whole_and_keeps_its_mode(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(SMALL)
    os.chmod(path, 0o640)
    text = ce.with_draft(SMALL, replace(ce.draft_of(ce.parse(SMALL), "a"), epochs=3))
    ce.save(text, path)
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["experiments.toml"]


def test_the_forms_objectives_are_the_catalogs_students():
    from engine import catalog
    assert ce.TEACHER_OBJECTIVE in catalog.OBJECTIVES
    assert set(ce.STUDENT_OBJECTIVES) | {ce.TEACHER_OBJECTIVE} == set(catalog.OBJECTIVES)
    assert ce.TEACHER_OBJECTIVE not in ce.STUDENT_OBJECTIVES
