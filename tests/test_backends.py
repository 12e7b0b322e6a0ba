"""The front ends ask a backend, not the host table: the kind keys of a [hosts.X] table (`slurm`,
and `local`, which is `not ssh`) are read in exactly one function, ban_tui.backends.backend_for;
`ban_tui/cli.py` and `ban_tui/app.py` never tell launch results apart by type; cli.py stays short
with every command defined once; backend_for maps each kind of table to its backend."""
import ast
from pathlib import Path

from engine.spec import Host, Slurm
from ban_tui.backends import backend_for
from ban_tui.backends.local import LocalBackend
from ban_tui.backends.slurm import SlurmBackend
from ban_tui.backends.ssh import SshBackend

ROOT = Path(__file__).resolve().parents[1]
KIND_KEYS = {"slurm", "local"}


def kind_reads(root: Path) -> dict[str, set[str]]:
    """{module:function -> the kind keys it reads} over ban_tui/. A Source's own `local` (whether its
    run directory is on this machine, read as `source.local`) is the source's, not a host's."""
    found = {}
    for path in (root / "ban_tui").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if (isinstance(node, ast.Attribute) and node.attr in KIND_KEYS and isinstance(node.ctx, ast.Load)
                        and "source" not in ast.unparse(node.value)):
                    found.setdefault(f"{path.relative_to(root)}:{fn.name}", set()).add(node.attr)
    return found


def test_host_kind_keys_are_read_in_exactly_one_function():
    assert kind_reads(ROOT) == {"ban_tui/backends/__init__.py:backend_for": {"slurm", "local"}}


def test_the_scan_sees_a_kind_read_elsewhere(tmp_path):
    (tmp_path / "ban_tui").mkdir()
    (tmp_path / "ban_tui" / "x.py").write_text("def f(host, source):\n    return host.slurm, source.local, host.local\n")
    assert kind_reads(tmp_path) == {"ban_tui/x.py:f": {"slurm", "local"}}


def test_no_isinstance_on_launch_results_in_the_front_ends():
    for name in ("cli.py", "app.py"):
        tree = ast.parse((ROOT / "ban_tui" / name).read_text())
        checked = [ast.unparse(n.args[1]) for n in ast.walk(tree) if isinstance(n, ast.Call)
                   and isinstance(n.func, ast.Name) and n.func.id == "isinstance"]
        assert not [c for c in checked if "Launch" in c or "Remote" in c or "Slurm" in c], (name, checked)


def test_cli_is_short_and_defines_each_command_once():
    text = (ROOT / "ban_tui" / "cli.py").read_text()
    assert len(text.splitlines()) < 600
    tree = ast.parse(text)
    commands = []
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        for d in fn.decorator_list:
            if isinstance(d, ast.Call) and ast.unparse(d.func) == "app.command":
                commands.append(d.args[0].value if d.args else fn.name)
    assert len(commands) == len(set(commands)) and {"run", "ls", "follow", "resume", "cancel", "rm"} <= set(commands)
    names = [fn.name for fn in tree.body if isinstance(fn, ast.FunctionDef)]
    assert not [n for n in names if n.endswith("_remote")], names   # no remote twin of a command


def test_backend_for_maps_each_kind_of_host_table(tmp_path):
    assert isinstance(backend_for(None, tmp_path), LocalBackend)
    local = backend_for(Host(name="local", ssh="", slots=2), tmp_path)
    assert isinstance(local, LocalBackend) and local.table.slots == 2 and not local.remote
    box = backend_for(Host(name="gpu1", ssh="gpu1"))
    assert type(box) is SshBackend and box.remote and not box.batched
    cluster = backend_for(Host(name="c", ssh="login", slurm=Slurm()))
    assert isinstance(cluster, SlurmBackend) and cluster.batched and cluster.cfg == Slurm()


def test_every_backend_offers_every_call_of_the_protocol(tmp_path):
    from ban_tui.backends.base import Backend
    calls = {n for n in vars(Backend) if not n.startswith("_")} | set(Backend.__annotations__)
    assert {"submit", "runs", "find", "source", "cancel", "resume", "rm", "status"} <= calls
    for b in (backend_for(None, tmp_path), backend_for(Host(name="gpu1", ssh="gpu1")),
              backend_for(Host(name="c", ssh="login", slurm=Slurm()))):
        assert not [c for c in calls if not hasattr(b, c)], type(b).__name__


def test_no_python_source_travels_as_a_string():
    """What runs on a host is a module of the package (python -m ban_tui.host), never `python -c`
    with source pasted into the command."""
    for path in (ROOT / "ban_tui").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not ("import " in node.value and "\n" in node.value and "from " in node.value
                            and "print(" in node.value), f"{path}: Python source in a string"
            if isinstance(node, ast.JoinedStr):   # f"{rpath(host.python)} -c {...}"
                for a, b in zip(node.values, node.values[1:]):
                    assert not (isinstance(a, ast.FormattedValue) and "python" in ast.unparse(a.value)
                                and isinstance(b, ast.Constant) and b.value.startswith(" -c ")), \
                        f"{path}:{node.lineno}: `python -c` in a command line"
