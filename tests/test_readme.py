"""The README's examples run as written: every ```toml block that starts with `# FILE` is
written to FILE, and every `ban` command of a ```sh block runs on them (a `ban run` with
--dry-run added, so the test trains nothing: it validates the file, resolves the chains and
prints what would run). The quick start's `ban run` runs the same way on the repository's
experiments.toml, and its other two commands (the install, the suite) are what .ci/run runs.
The README stays a page a newcomer can read: under 200 lines, no path of the machine it was
written on."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from helpers import BAN, cli_env

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def commands() -> list[list[str]]:
    """The `ban` commands of the sh blocks, comments dropped."""
    found = []
    for block in blocks("sh"):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                assert argv[0] == "ban", line   # an example is a ban command
                found.append(argv)
    return found


def ban(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if argv[1] == "run" and "--dry-run" not in argv:
        argv = argv + ["--dry-run"]
    return subprocess.run([BAN, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=cli_env(XDG_CONFIG_HOME=str(cwd)))   # no user hosts file


def test_every_example_command_runs_on_the_example_files(tmp_path):
    files = {}
    for block in blocks("toml"):
        first, _, body = block.partition("\n")
        name = first.removeprefix("# ")
        assert first.startswith("# ") and name.endswith(".toml"), first
        files[name] = body
        (tmp_path / name).write_text(body)
    assert {"chain.toml", "sweep.toml", "remote.toml"} <= set(files)
    ran = commands()
    assert {a[2] for a in ran if a[1] in ("validate", "run")} == set(files)   # every file is used
    for argv in ran:
        done = ban(argv, tmp_path)
        assert done.returncode == 0, (argv, done.stdout[-500:], done.stderr[-500:])
    assert "sweep grid: 6 experiments" in ban(["ban", "validate", "sweep.toml"], tmp_path).stdout
    assert not (tmp_path / "runs").exists()   # dry runs: nothing launched


def test_the_quick_start_is_what_ci_runs():
    [quick] = [b for b in blocks("bash") if "ban run" in b]
    lines = [ln for ln in quick.splitlines() if ln.strip()]
    steps = [s.strip() for s in lines[0].split("&&")]
    assert steps[0] == "python3 -m venv .venv" and steps[1].startswith(".venv/bin/pip install -e")
    assert steps[2] == ".venv/bin/ban run experiments.toml" and lines[1] == ".venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in ci and ".venv/bin/pip install" in ci and ".venv/bin/python -m pytest" in ci
    done = ban(shlex.split(steps[2].removeprefix(".venv/bin/")), ROOT)
    assert done.returncode == 0 and "quickstart" in done.stdout, done.stderr


def test_the_readme_is_short_and_names_no_path_of_this_machine():
    assert len(README.splitlines()) < 200
    assert not re.search(r"(?<![\w.~])/(work|tmp|home|root|opt|mnt)/", README)
    for link in re.findall(r"\]\(([^)#]+)", README):   # every relative link lands on a file
        assert (ROOT / link).exists(), link
