"""Reading a config file into checked `engine.spec` objects, and writing a run's snapshot."""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

from engine.spec.checks import Checker
from engine.spec.schema import Config, Experiment, Host, Problem, SpecError, _drop_none


def load(path: str | Path, extra_hosts=()) -> Config:
    """Parse and validate a config file; raise SpecError listing every problem.
    `extra_hosts`: host names defined outside the file (the user's hosts file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([Problem(str(path), None, None, "", f"cannot read the file: {exc.strerror}")])
    return Checker(str(path), text, extra_hosts).check()


def loads(text: str, path: str = "<string>", extra_hosts=()) -> Config:
    return Checker(path, text, extra_hosts).check()


def dumps_experiment(exp: Experiment, hosts: dict[str, Host] | None = None) -> str:
    """A config file holding just this experiment, fully resolved (the run snapshot)."""
    import tomlkit
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"resolved snapshot of experiment {exp.name!r} from {exp.source or 'a config'}"))
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
