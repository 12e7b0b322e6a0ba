"""Sweeps: an experiment's `sweep` table expanded into the cartesian product of named children.

    [[experiment]]
    name = "t2-90-60"
    sweep = { objective = ["ban", "ban+l", "cwtm"], "objective_options.temperature" = [1.0, 2.0] }

gives six experiments, each a normal one validated as usual, named after the parent and the cell:
``t2-90-60.objective=ban,temperature=1`` ... (the parent's `/` of a study is a `.` here: a name
is one directory of the runs layout). A key is any experiment key but `name`, `generation` and
`seeds` (already a list), or `TABLE.KEY` for a key of a table (`optimizer.lr`, `dataset.augment`,
`model_options.dropout`, `objective_options.temperature`). Cells go in the order of the table,
the last key changing fastest. A problem of a cell's value is reported at the line and column of
its entry in the sweep's list.

Imports no torch and no textual; below engine.spec.checks, which calls it: what it reports with
(`describe`, `did_you_mean`, the experiment keys) comes through the checker.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import fields

from engine import catalog
from engine.spec.schema import Dataset, Optimizer, Problem, Schedule

NOT_SWEPT = ("name", "generation", "seeds", "sweep")
TABLE_KEYS = {"dataset": tuple(f.name for f in fields(Dataset)),
              "optimizer": tuple(f.name for f in fields(Optimizer)),
              "schedule": tuple(f.name for f in fields(Schedule)),
              "objective_options": tuple(sorted({o for opts in catalog.OBJECTIVE_OPTIONS.values() for o in opts})),
              "model_options": None}   # free-form: the model checks them
TAKES_TABLE = ("dataset", "optimizer", "objective_options", "model_options")
MAX_CELLS = 100_000   # beyond this even listing the grid is pointless (the CLI asks --yes above 1,000)


def label(v) -> str:
    """A value as it reads in a cell's name: 2.0 -> 2, true, ban+l, {lr = 0.1} -> lr=0.1."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "+".join(f"{k}={label(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "+".join(label(x) for x in v)
    return str(v)


def cell_name(parent: str, cell: dict) -> str:
    """`parent.key=value,key=value` with each key's last dotted part (the whole key where two
    share it), characters outside the run-name alphabet as `_`; a name over 128 characters is cut
    and ends with a hash of the whole."""
    lasts = [k.split(".")[-1] for k in cell]
    parts = [f"{last if lasts.count(last) == 1 else k.replace('.', '_')}={label(v)}"
             for (k, v), last in zip(cell.items(), lasts)]
    name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", f"{parent}." + ",".join(parts)).replace("..", "._")
    if len(name) > 128:
        name = name[:119] + "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name.replace("~", "-")
    return name


def set_key(raw: dict, key: str, value) -> None:
    """raw[key] = value, or raw[TABLE][KEY] for `TABLE.KEY` (the table made or copied)."""
    head, _, sub = key.partition(".")
    if not sub:
        raw[head] = copy.deepcopy(value)
        return
    table = raw.get(head)
    if head == "schedule" and isinstance(table, str):   # schedule = "cosine" is schedule.name
        table = {"name": table}
    raw[head] = {**(table if isinstance(table, dict) else {}), sub: copy.deepcopy(value)}


# ---- where the entries are in the text --------------------------------------------------------

def _experiment_lines(loc, i: int) -> tuple[int, int]:
    """The lines of [[experiment]] number i with its sub-tables ([experiment.sweep] ...)."""
    starts = [(n, idx, s) for n, idx, s in loc.sections]
    for j, (n, idx, s) in enumerate(starts):
        if n == "experiment" and idx == i:
            end = next((s2 for n2, _, s2 in starts[j + 1:] if not n2.startswith("experiment.")
                        or n2 == "experiment"), len(loc.lines))
            return s, end
    return 0, len(loc.lines)


def _entries(text: str, pos: int) -> list[int]:
    """Offsets of the entries of the array whose `[` is at pos (strings, nesting, comments)."""
    depth, quote, expect, found, k = 0, None, True, [], pos
    while k < len(text):
        c = text[k]
        if quote:
            if c == "\\" and quote == '"':
                k += 1
            elif c == quote:
                quote = None
        elif c == "#":
            while k < len(text) and text[k] != "\n":
                k += 1
            continue
        elif c in "[{":
            if depth == 1 and expect:
                found.append(k)
                expect = False
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return found
        elif depth == 1 and c == ",":
            expect = True
        else:
            if depth == 1 and expect and not c.isspace():
                found.append(k)
                expect = False
            if c in "\"'":
                quote = c
        k += 1
    return found


def locate(loc, i: int, key: str) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """((line, col) of `key =` in experiment i's sweep, [(line, col) of each list entry])."""
    start, end = _experiment_lines(loc, i)
    lines = loc.lines[start:end]
    text = "\n".join(lines)
    m = (re.search(r"^\s*\[\s*experiment\.sweep\s*\]", text, re.M)
         or re.search(r"^\s*sweep\s*=\s*\{", text, re.M))
    if not m:
        return None, []
    km = re.compile(r"(?:^|[{,\s])([\"']?)" + re.escape(key) + r"\1\s*=\s*").search(text, m.end())
    if not km:
        return None, []

    def where(offset: int) -> tuple[int, int]:
        before = text[:offset]
        return start + before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1

    key_at = where(km.start(1))
    if km.end() >= len(text) or text[km.end()] != "[":
        return key_at, []
    return key_at, [where(o) for o in _entries(text, km.end())]


# ---- expansion ------------------------------------------------------------------------------

def _check_key(checker, path, key: str, values) -> bool:
    """A sweep key and its list: known key, a non-empty array, tables where the key takes one."""
    describe, did_you_mean = checker.describe, checker.did_you_mean
    head, dot, sub = key.partition(".")
    allowed = [k for k in checker.experiment_keys if k not in NOT_SWEPT]
    if head in NOT_SWEPT:
        checker.bad(path, f"expected a key to sweep, found {head!r}, which cannot be swept"
                    + (" (seeds is already a list: every cell runs every seed)" if head == "seeds" else ""))
        return False
    if head not in allowed or (dot and head not in TABLE_KEYS):
        tables = [f"{t}.KEY" for t in TABLE_KEYS]
        checker.bad(path, f"unknown key{did_you_mean(key, allowed + tables)}; expected one of: "
                    + ", ".join(allowed) + " or " + ", ".join(tables))
        return False
    subs = TABLE_KEYS.get(head) if dot else None
    if subs is not None and sub not in subs:
        checker.bad(path, f"unknown key {sub!r} of {head}{did_you_mean(sub, subs)}; expected one of: " + ", ".join(subs))
        return False
    if isinstance(values, dict):
        inner = next(iter(values), "KEY")
        checker.bad(path, f"expected an array of values, found a table (to sweep a key of {key}, "
                    f"write \"{key}.{inner}\" = [...])")
        return False
    if not isinstance(values, list):
        checker.bad(path, f"expected an array of values to sweep, found {describe(values)}")
        return False
    if not values:
        checker.bad(path, "expected a non-empty array of values to sweep, found an empty array")
        return False
    return True


def _bad_entry(checker, i: int, key: str, j: int, message: str) -> None:
    key_at, entries = locate(checker.loc, i, key)
    line, col = entries[j] if j < len(entries) else key_at or checker.loc.find(("experiment", i, "sweep"))
    checker.problems.append(Problem(checker.file, line, col, f"experiment[{i}].sweep.{key}[{j}]", message))


def _table_entries(checker, i: int, key: str, values: list) -> bool:
    describe = checker.describe
    ok = True
    if key in TAKES_TABLE:
        for j, v in enumerate(values):
            if not isinstance(v, dict):
                _bad_entry(checker, i, key, j, f"expected a table ({key} takes a table; to sweep one of "
                           f"its keys write \"{key}.KEY\" = [...]), found {describe(v)}")
                ok = False
    return ok


def grid(checker, i: int, raw: dict) -> dict[str, list] | None:
    """The checked sweep table of experiment i ({} without one, None when it is bad)."""
    describe = checker.describe
    sweep = raw.get("sweep")
    if sweep is None:
        return {}
    path = ("experiment", i, "sweep")
    if not isinstance(sweep, dict):
        checker.bad(path, f"expected a table of arrays like {{ objective = [\"ban\", \"ban+l\"] }}, found {describe(sweep)}")
        return None
    ok = bool(sweep)
    if not ok:
        checker.bad(path, "expected at least one key to sweep, found an empty table")
    for key, values in sweep.items():
        key_at = locate(checker.loc, i, key)[0]
        kpath = path + (key,)
        n = len(checker.problems)
        good = _check_key(checker, kpath, key, values)
        if key_at:
            for p in checker.problems[n:]:
                p.line, p.col = key_at
        ok = good and _table_entries(checker, i, key, values) and ok
    size = 1
    for values in sweep.values():
        size *= len(values) if isinstance(values, list) else 1
    if ok and size > MAX_CELLS:
        checker.bad(path, f"expected at most {MAX_CELLS:,} cells, found {size:,}")
        ok = False
    return dict(sweep) if ok else None


def applies(key: str, merged: dict) -> bool:
    """False for a swept objective option the cell's objective does not take (a sweep of
    objectives x temperatures: cwtm takes no temperature), so that such a cell is still valid."""
    head, _, sub = key.partition(".")
    obj = merged.get("objective", "ban")
    if head != "objective_options" or "generation" in merged or obj not in catalog.OBJECTIVE_OPTIONS:
        return True
    return sub in catalog.OBJECTIVE_OPTIONS[obj]


def expand(checker, i: int, raw: dict, defaults: dict, validate) -> list[tuple]:
    """[(experiment or None, parent name or None, cell)] of experiment i: one without a sweep,
    else one per cell. `validate(raw)` checks one experiment table (Checker.experiment); a
    problem of a swept value is moved to its entry in the sweep, and each is reported once.
    An objective option (swept, or the experiment's own when objectives are swept) is set only in
    the cells whose objective takes it (`applies`)."""
    table = grid(checker, i, raw) if isinstance(raw, dict) else {}
    if table is None:   # the rest of the experiment is still checked, once
        validate({k: v for k, v in raw.items() if k != "sweep"})
        return []
    if not table:
        return [(validate(raw), None, {})]
    parent = raw.get("name")
    parent = parent if isinstance(parent, str) else f"experiment{i}"
    keys = list(table)
    out, seen = [], {str(p) for p in checker.problems}
    for combo in itertools.product(*(range(len(table[k])) for k in keys)):
        cell = {k: table[k][j] for k, j in zip(keys, combo)}
        child = {k: v for k, v in raw.items() if k != "sweep"}
        for k, v in cell.items():
            if applies(k, {**defaults, **child}):
                set_key(child, k, v)
        shared = {**defaults, **child}.get("objective_options")
        if "objective" in cell and isinstance(shared, dict):   # the options of the objectives that take them
            child["objective_options"] = {o: v for o, v in shared.items()
                                          if applies(f"objective_options.{o}", {**defaults, **child})}
        child["name"] = cell_name(parent, cell)
        n = len(checker.problems)
        exp = validate(child)
        fresh = []
        for p in checker.problems[n:]:
            for k, j in zip(keys, combo):
                if p.key == f"experiment[{i}].{k}" or p.key.startswith(f"experiment[{i}].{k}."):
                    key_at, entries = locate(checker.loc, i, k)
                    p.line, p.col = entries[j] if j < len(entries) else key_at or (p.line, p.col)
                    p.key = f"experiment[{i}].sweep.{k}[{j}]"
                    p.message += f" (in cell {child['name']})"
                    break
            if str(p).split(" (in cell ")[0] not in seen:
                seen.add(str(p).split(" (in cell ")[0])
                fresh.append(p)
        checker.problems[n:] = fresh
        out.append((exp, parent, cell))
    return out
