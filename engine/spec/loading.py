"""Reading a config file into checked `engine.spec` objects, and writing a run's snapshot."""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

from engine import catalog
from engine.spec.checks import Checker
from engine.spec.schema import Config, Experiment, Host, Problem, SpecError, _drop_none


def load(path: str | Path, extra_hosts=()) -> Config:
    """Parse and validate a config file; raise SpecError listing every problem.
    `extra_hosts`: host names defined outside the file (the user's hosts file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError([Problem(str(path), None, None, "", f"cannot read the file: {exc.strerror}")])
    return Checker(str(path), decode(str(path), data), extra_hosts).check()


def decode(file: str, data: bytes) -> str:
    """A config file's bytes as text: UTF-8 (a leading byte-order mark is allowed), else a
    SpecError at the line and column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)   # (offsets skip the mark)
        line = data.count(b"\n", 0, start) + 1
        col = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise SpecError([Problem(file, line, col, "", f"expected UTF-8 text, found byte 0x{data[start]:02x} "
                                 "(save the file as UTF-8)")]) from None


def loads(text: str, path: str = "<string>", extra_hosts=()) -> Config:
    return Checker(path, text, extra_hosts).check()


def dumps_experiment(exp: Experiment, hosts: dict[str, Host] | None = None) -> str:
    """A config file holding just this experiment, fully resolved (the run snapshot)."""
    import tomlkit
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"resolved snapshot of experiment {exp.name!r} from {exp.source or 'a config'}"))
    for ref in dict.fromkeys(g.model for g in exp.generations if catalog.parse_reference(g.model)):
        v = catalog.reference_versions(ref)   # what a resume elsewhere must rebuild (issue 24)
        doc.add(tomlkit.comment(f"model {ref}: {v['package']} {v['version'] or '(no installed version)'} "
                                f"from {v['origin'] or '(not importable here)'}"))
    doc["experiment"] = tomlkit.aot()
    table = exp.to_dict()
    gens = table.pop("generations")
    item = tomlkit.table()
    for k, v in table.items():
        item[k] = copy.deepcopy(v)
    item["generation"] = tomlkit.aot()
    for g in gens:
        item["generation"].append(g)
    doc["experiment"].append(item)
    if hosts:
        doc["hosts"] = {h.name: _drop_none({k: v for k, v in asdict(h).items() if k != "name"})
                        for h in hosts.values()}
    return tomlkit.dumps(doc)
