"""Editing experiments.toml from the TUI's chain form, keeping the user's comments and layout.

Pure functions on tomlkit documents (no textual): `draft_of` reads one experiment into a
`ChainDraft` (the form's values), `apply_draft` writes a draft back touching only the keys whose
value changed, `problems` validates the edited text with the same checker as `ban validate`
(engine.spec.loads), and `save` writes the file through a temp file and a rename.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table, Whitespace

from engine import catalog, spec
from engine.spec import Problem, SpecError

TEACHER_OBJECTIVE = "ce"
STUDENT_OBJECTIVES = tuple(o for o in catalog.OBJECTIVES if o != TEACHER_OBJECTIVE)   # the form's choices

# Every default comes from the spec itself: the resolution of an experiment that sets nothing.
_BASE = spec.loads('[[experiment]]\nname = "base"\n').experiments["base"]


class EditError(ValueError):
    """A form value that cannot be written (one line: the field, what was expected, what was found)."""


@dataclass
class GenRow:
    objective: str
    model: str
    table: int | None = None   # the [[experiment.generation]] table it came from (keeps its other keys)


@dataclass
class ChainDraft:
    """What the chain form shows and edits; values are effective (inherited ones filled in)."""
    name: str
    dataset: str = _BASE.dataset.name
    root: str = ""                     # data root ("" for none)
    epochs: int = _BASE.generations[0].training.epochs
    batch_size: int = _BASE.generations[0].training.batch_size
    lr: float = _BASE.generations[0].training.optimizer.lr
    ensembles: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: list(_BASE.seeds))
    rows: list[GenRow] = field(default_factory=list)   # rows[0] is the teacher
    source: str | None = None          # the experiment's name in the file; None for a new one

    @property
    def teacher_model(self) -> str:
        return self.rows[0].model if self.rows else _BASE.generations[0].model


# ---- reading ------------------------------------------------------------------------------

def parse(text: str) -> tomlkit.TOMLDocument:
    return tomlkit.parse(text)


def experiment_tables(doc) -> list[Table]:
    exps = doc.get("experiment")
    return list(exps) if isinstance(exps, AoT) else []


def experiment_names(doc) -> list[str]:
    return [str(t.get("name", f"<experiment {i}>")) for i, t in enumerate(experiment_tables(doc))]


def experiment_table(doc, name: str) -> Table:
    for t in experiment_tables(doc):
        if t.get("name") == name:
            return t
    raise EditError(f"experiment {name!r}: not found in the config (found: {', '.join(experiment_names(doc)) or 'none'})")


def _typed(value, kind, fallback):
    """A raw value if it has the type the form edits (a broken file still opens in the form)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        return fallback
    return value


def _int_list(value, fallback):
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return list(fallback)


def draft_of(doc, name: str) -> ChainDraft:
    table = experiment_table(doc, name)
    defaults = doc.get("defaults", {})
    raw = {**(defaults.unwrap() if hasattr(defaults, "unwrap") else {}), **table.unwrap()}
    base_train = _BASE.generations[0].training
    ds = raw.get("dataset", _BASE.dataset.name)
    ds = {"name": ds} if isinstance(ds, str) else ds if isinstance(ds, dict) else {}
    opt = raw.get("optimizer") if isinstance(raw.get("optimizer"), dict) else {}
    model = _typed(raw.get("model"), str, _BASE.generations[0].model)
    if isinstance(raw.get("generation"), list):
        rows = []
        for j, g in enumerate(raw["generation"]):
            g = g if isinstance(g, dict) else {}
            default_obj = TEACHER_OBJECTIVE if j == 0 else _BASE.generations[1].objective
            rows.append(GenRow(_typed(g.get("objective"), str, default_obj), _typed(g.get("model"), str, model), j))
    else:
        n = _typed(raw.get("generations"), int, len(_BASE.generations) - 1)
        obj = _typed(raw.get("objective"), str, _BASE.generations[1].objective)
        rows = [GenRow(TEACHER_OBJECTIVE, model)] + [GenRow(obj, model) for _ in range(max(n, 0))]
    return ChainDraft(
        name=str(table.get("name", name)),
        dataset=_typed(ds.get("name"), str, _BASE.dataset.name),
        root=_typed(ds.get("root"), str, ""),
        epochs=_typed(raw.get("epochs"), int, base_train.epochs),
        batch_size=_typed(raw.get("batch_size"), int, base_train.batch_size),
        lr=float(_typed(opt.get("lr"), (int, float), base_train.optimizer.lr)),
        ensembles=_int_list(raw.get("ensembles"), _BASE.ensembles),
        seeds=_int_list(raw.get("seeds"), _BASE.seeds),
        rows=rows,
        source=name,
    )


def new_draft(doc, model: str = "cnn-small", dataset: str = "digits") -> ChainDraft:
    """A fresh teacher + one BAN student chain under an unused name."""
    names, i = set(experiment_names(doc)), 1
    while f"chain-{i}" in names:
        i += 1
    return ChainDraft(name=f"chain-{i}", dataset=dataset, epochs=5, ensembles=[],
                      rows=[GenRow(TEACHER_OBJECTIVE, model), GenRow(_BASE.generations[1].objective, model)])


# ---- row edits (the form's add / remove / reorder) ------------------------------------------

def add_row(draft: ChainDraft) -> ChainDraft:
    last = draft.rows[-1] if len(draft.rows) > 1 else GenRow(_BASE.generations[1].objective, draft.teacher_model)
    return replace(draft, rows=draft.rows + [GenRow(last.objective, last.model)])


def remove_row(draft: ChainDraft, i: int) -> ChainDraft:
    if i < 1 or i >= len(draft.rows):
        raise EditError(f"generation {i}: expected a student generation (1..{len(draft.rows) - 1}) to remove, found none")
    return replace(draft, rows=draft.rows[:i] + draft.rows[i + 1:])


def move_row(draft: ChainDraft, i: int, step: int) -> ChainDraft:
    """Swap student i with its neighbour (the teacher stays generation 0)."""
    j = i + step
    if not (1 <= i < len(draft.rows) and 1 <= j < len(draft.rows)):
        return draft
    rows = list(draft.rows)
    rows[i], rows[j] = rows[j], rows[i]
    return replace(draft, rows=rows)


def parse_int_list(text: str, key: str) -> list[int]:
    """'2, 3' -> [2, 3]; a clear one-line error otherwise."""
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(int(part))
        except ValueError:
            raise EditError(f"{key}: expected whole numbers separated by commas, found {part!r}") from None
    return out


# ---- writing ------------------------------------------------------------------------------

def _inline(d: dict):
    t = tomlkit.inline_table()
    t.update(d)
    return t


def _last_table(item) -> Table:
    """The table whose body ends the text of a table (its last [[...generation]], if any)."""
    while True:
        if isinstance(item, AoT):
            item = item[-1]
        elif item.value.body and isinstance(item.value.body[-1][1], (AoT, Table)):
            item = item.value.body[-1][1]
        else:
            return item


def _ends_blank(table: Table) -> bool:
    body = _last_table(table).value.body
    return bool(body) and isinstance(body[-1][1], Whitespace)


def _pop_trailer(table: Table) -> list:
    """Remove and return the comments and blank lines after a table's last key: in a config they
    introduce what follows, so they must stay at the end when tables are added or moved."""
    body = table.value.body
    n = len(body)
    while n and body[n - 1][0] is None:
        n -= 1
    trailer = [item for _, item in body[n:]]
    del body[n:]
    return trailer


def _end_with(table: Table, blank: bool) -> None:
    """Trailing blank lines of a table normalised to one (blank) or none; comments stay."""
    body = table.value.body
    while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
        del body[-1]
    if blank:
        table.add(tomlkit.nl())


def _push_trailer(table: Table, trailer: list) -> None:
    for item in trailer:
        table.add(item)


def _set_row(g: Table, row: GenRow, model: str) -> Table:
    """Objective and model of one generation table (model only where it differs from the experiment's)."""
    g["objective"] = row.objective
    if row.model != model or "model" in g:
        g["model"] = row.model
    return g


def _set_generations(table: Table, draft: ChainDraft) -> None:
    """Write the rows as [[experiment.generation]] tables, each keeping its own other keys;
    tables that stay in place are edited in place (their comments and layout kept)."""
    model = table.get("model", _BASE.generations[0].model)
    if "generation" not in table:  # from the `generations = n` shorthand
        for k in ("generations", "objective"):
            if k in table:
                del table[k]
        trailer = _pop_trailer(table)
        aot = tomlkit.aot()
        for row in draft.rows:
            aot.append(_set_row(tomlkit.table(), row, model))
        aot[0].trivia.indent = "\n"
        table["generation"] = aot
        _push_trailer(aot[-1], trailer)
        return
    aot = table["generation"]
    trailer = _pop_trailer(aot[-1])
    blank = len(aot) > 1 and _ends_blank(aot[0])   # the file's style between generation tables
    old = [copy.deepcopy(t) for t in aot]
    for j, row in enumerate(draft.rows):
        if row.table == j and j < len(aot):
            _set_row(aot[j], row, model)
        else:
            g = _set_row(copy.deepcopy(old[row.table]) if row.table is not None else tomlkit.table(), row, model)
            if j < len(aot):
                aot[j] = g
            else:
                aot.append(g)
    while len(aot) > len(draft.rows):
        del aot[-1]
    for g in aot:
        _end_with(g, blank and g is not aot[-1])
    _push_trailer(aot[-1], trailer)


def apply_draft(doc, draft: ChainDraft) -> None:
    """Write the draft into doc: an existing experiment (draft.source) or a new [[experiment]]."""
    if not draft.rows or draft.rows[0].objective != TEACHER_OBJECTIVE:
        raise EditError(f"experiment {draft.name!r}: expected generation 0 to be the teacher (objective 'ce')")
    if draft.source is None:
        if "experiment" not in doc:
            doc["experiment"] = tomlkit.aot()
        exps = doc["experiment"]
        table = tomlkit.table()
        if len(exps) and not _ends_blank(exps[-1]):
            table.trivia.indent = "\n"
        table["name"] = draft.name
        table["dataset"] = _inline({"name": draft.dataset})
        table["model"] = draft.teacher_model
        exps.append(table)
        old = None
    else:
        table = experiment_table(doc, draft.source)
        old = draft_of(doc, draft.source)

    def changed(attr) -> bool:
        return old is None or getattr(old, attr) != getattr(draft, attr)

    if changed("name"):
        table["name"] = draft.name
    if changed("dataset") or changed("root"):
        ds = table.get("dataset")
        if isinstance(ds, str) or ds is None:
            table["dataset"] = _inline({"name": draft.dataset, **({"root": draft.root} if draft.root else {})})
        else:
            ds["name"] = draft.dataset
            if draft.root:
                ds["root"] = draft.root
            elif "root" in ds:
                del ds["root"]
    for key in ("epochs", "batch_size"):
        if changed(key):
            table[key] = getattr(draft, key)
    if changed("lr"):
        if isinstance(table.get("optimizer"), dict):
            table["optimizer"]["lr"] = draft.lr
        else:  # a table here replaces [defaults].optimizer as a whole: carry its other keys over
            inherited = doc.get("defaults", {}).get("optimizer", {})
            table["optimizer"] = _inline({**(inherited.unwrap() if hasattr(inherited, "unwrap") else {}), "lr": draft.lr})
    for key in ("ensembles", "seeds"):
        if changed(key):
            table[key] = list(getattr(draft, key))
    if old is None or old.rows != draft.rows:
        students = draft.rows[1:]
        uniform = all(r.objective == draft.rows[-1].objective and r.model == draft.teacher_model for r in students)
        if "generation" not in table and uniform and students and all(r.table is None for r in draft.rows):
            if old is None or old.teacher_model != draft.teacher_model:
                table["model"] = draft.teacher_model
            table["generations"] = len(students)
            table["objective"] = students[0].objective
        else:
            if "generation" not in table and "model" not in table:
                table["model"] = draft.teacher_model
            _set_generations(table, draft)
    if old is None and not _ends_blank(table):
        _last_table(table).add(tomlkit.nl())


def with_draft(text: str, draft: ChainDraft) -> str:
    """The config text with the draft applied (the original text is not changed)."""
    doc = parse(text)
    apply_draft(doc, draft)
    return tomlkit.dumps(doc)


def problems(text: str, path: str | Path, extra_hosts=()) -> list[Problem]:
    """Every problem `ban validate` would report for this text (empty when valid);
    `extra_hosts`: the names of the user's hosts file, which a `host` key may name too."""
    try:
        spec.loads(text, str(path), extra_hosts)
    except SpecError as exc:
        return exc.problems
    return []


def save(text: str, path: str | Path) -> None:
    """Write the file through a temp file in the same directory and a rename: never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
