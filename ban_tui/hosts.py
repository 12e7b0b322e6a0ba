"""Where the remote GPU boxes are: `[hosts.NAME]` tables of experiments.toml and of a user file.

The user file `$XDG_CONFIG_HOME/ban/hosts.toml` (default ~/.config/ban/hosts.toml) has the same
table shape as the config file, so a box described once serves every project; a host of the same
name in the project's config wins. Both go through the config validator (engine.spec.checks).
A host's slots are its `gpus = [0, 1, 3]` or `slots = N` (engine.scheduler); `[hosts.local]`,
the one host without `ssh`, gives this machine's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine.spec import Config, Host, Problem, SpecError
from engine.spec.checks import Checker
from engine.spec.loading import decode


def user_hosts_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ban" / "hosts.toml"


def load_user_hosts(path: Path | None = None) -> dict[str, Host]:
    """The hosts of the user file ({} when there is none); SpecError naming file:line on bad input."""
    path = Path(path) if path is not None else user_hosts_path()
    try:
        text = decode(str(path), path.read_bytes())   # SpecError where it is not UTF-8
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SpecError([Problem(str(path), None, None, "", f"cannot read the file: {exc.strerror}")])
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([Problem(str(path), None, None, "", f"TOML syntax error: {exc}")])
    checker = Checker(str(path), text)
    checker.unknown_keys((), doc, ("hosts",))
    hosts = checker.hosts(doc.get("hosts", {}))
    if checker.problems:
        raise SpecError(checker.problems)
    return hosts


def all_hosts(config: Config | None = None, user_path: Path | None = None) -> dict[str, Host]:
    """User hosts overridden by the config's hosts of the same name."""
    return {**load_user_hosts(user_path), **(config.hosts if config else {})}


def get_host(name: str, config: Config | None = None, user_path: Path | None = None) -> Host:
    hosts = all_hosts(config, user_path)
    if name not in hosts:
        where = f"{config.path} [hosts] or " if config else ""
        known = ", ".join(sorted(hosts)) or "none"
        raise LookupError(f"unknown host {name!r}: expected one defined in {where}"
                          f"{user_hosts_path() if user_path is None else user_path} (known: {known})")
    return hosts[name]


def ssh_hosts(hosts: dict[str, Host]) -> dict[str, Host]:
    """The hosts reached over ssh (not `[hosts.local]`, which only gives this machine's slots)."""
    from ban_tui.backends import backend_for   # the one reader of a table's kind
    return {name: h for name, h in hosts.items() if backend_for(h).remote}
