"""The import graph of engine/ and ban_tui/, read with ast: every import, at module level or
inside a function, is an edge. No cycle anywhere, a package that imports its submodules
included (`engine.models` imports `engine.models.cnn`, so `cnn` must not import `engine.models`
back: it imports `engine.models.registry` and `engine.models.common`), and the engine never
imports the manager. (What each side may load at run time, torch and textual, is held by
tests/test_cli.py, test_spec.py and test_engine_process.py.)"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, packages=("engine", "ban_tui")) -> dict[str, Path]:
    """Dotted module name -> file, a package named by its __init__.py."""
    out = {}
    for top in packages:
        for path in (root / top).rglob("*.py"):
            out[".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known) -> set[str]:
    """The modules of `known` that `name` imports: `import a.b` -> a.b; `from a import b` -> a.b
    where that is a module, else a; relative imports resolved against the importing package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in known:
                    target = target.rpartition(".")[0]
                found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package
                for _ in range(node.level - 1):
                    up = up.rpartition(".")[0]
                base = f"{up}.{base}" if base else up
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph(root: Path, packages=("engine", "ban_tui")) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected group of two or more modules."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [path_back(g, min(group), group) for group in groups]


def path_back(g, start, group) -> list[str]:
    """A shortest path start -> ... -> start inside group (breadth first)."""
    paths, seen = [[start]], set()
    while paths:
        path = paths.pop(0)
        for w in sorted(g[path[-1]] & group):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"{start} is in no cycle of {sorted(group)}")


def test_engine_and_ban_tui_import_no_cycle():
    g = graph(ROOT)
    assert {"engine.models", "engine.models.registry", "engine.spec.checks", "ban_tui.remote.source"} <= set(g)
    assert "engine.models.cnn" in g["engine.models"] and "engine.models.registry" in g["engine.models.cnn"]
    assert [" -> ".join(c) for c in cycles(g)] == []


def test_the_backends_sit_above_what_they_drive_and_below_the_front_ends():
    """ban_tui.backends drives launch, remote and slurm and is driven by the CLI and the TUI:
    nothing it uses imports it back (backend_for, imported by hosts for the one reading of a
    table's kind, is the package itself, which imports nothing of ban_tui at module level)."""
    g = graph(ROOT)
    backends = {m for m in g if m.startswith("ban_tui.backends")}
    assert {"ban_tui.backends", "ban_tui.backends.base", "ban_tui.backends.local", "ban_tui.backends.ssh",
            "ban_tui.backends.slurm"} <= backends
    assert "ban_tui.backends" in g["ban_tui.cli"] and "ban_tui.backends" in g["ban_tui.app"]
    below = set().union(*(g[m] for m in backends)) - backends
    up = {m: sorted(t for t in g[m] if t.startswith("ban_tui.backends")) for m in below}
    assert {m: ts for m, ts in up.items() if ts and m != "ban_tui.hosts"} == {}
    assert not {"ban_tui.cli", "ban_tui.app"} & below and not any(t.startswith("ban_tui.screens") for t in below)


def test_the_engine_never_imports_the_manager():
    """...but for engine.api, the notebooks' front end (like the CLI), which takes the report
    from ban_tui.report, the one place its statistics live."""
    g = graph(ROOT)
    up = {m: sorted(t for t in ts if t.startswith("ban_tui")) for m, ts in g.items() if m.startswith("engine")}
    assert {m: ts for m, ts in up.items() if ts} == {"engine.api": ["ban_tui.report"]}


def test_a_package_that_its_submodule_imports_back_is_a_cycle(tmp_path):
    """The graph sees the package -> submodule -> package cycle (and a relative one), as it was in
    engine.models before the registry moved out of its __init__.py."""
    pkg = tmp_path / "engine" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "engine" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("def register(f): return f\nfrom engine.models import cnn  # noqa\n")
    (pkg / "cnn.py").write_text("def build():\n    from engine.models import register\n")
    (pkg / "lm.py").write_text("from . import helpers\n")
    (pkg / "helpers.py").write_text("from .lm import x\n")
    (tmp_path / "engine" / "fine.py").write_text("from engine.models import cnn\nimport engine.models.lm\n")
    g = graph(tmp_path, ("engine",))
    assert g["engine.fine"] == {"engine.models.cnn", "engine.models.lm"}
    assert sorted(cycles(g)) == [["engine.models", "engine.models.cnn", "engine.models"],
                                 ["engine.models.helpers", "engine.models.lm", "engine.models.helpers"]]


def test_host_side_code_imports_nothing_of_the_laptop_side():
    """ban_tui.host runs on the host (`python -m ban_tui.host`): it imports the engine, the launcher
    and itself, never ban_tui.remote, backends, slurm (the laptop's side) or the front ends."""
    g = graph(ROOT)
    host = {m for m in g if m.startswith("ban_tui.host.") or m == "ban_tui.host"} - {"ban_tui.hosts"}
    assert {"ban_tui.host.__main__", "ban_tui.host.control", "ban_tui.host.slurm_login", "ban_tui.host.slurm_job"} <= host
    allowed = ("engine", "ban_tui.host", "ban_tui.launch", "ban_tui.errors")
    assert {m: sorted(t for t in g[m] if not t.startswith(allowed) or t == "ban_tui.hosts")
            for m in host if any(not t.startswith(allowed) or t == "ban_tui.hosts" for t in g[m])} == {}
    assert "ban_tui.slurm" not in g["ban_tui.remote.control"]


# ---- docs/INTERNALS.md's import map: generated from this graph, held to it -------------------

MAP_BEGIN, MAP_END = "<!-- import map: begin (python tests/test_layering.py writes it) -->", "<!-- import map: end -->"
INTERNALS = ROOT / "docs" / "INTERNALS.md"


def import_map(g: dict[str, set[str]]) -> str:
    """One line per module: `module` -> what it imports (`e.` engine., `t.` ban_tui.)."""
    short = lambda m: m.replace("engine.", "e.").replace("ban_tui.", "t.")   # noqa: E731
    return "\n".join(f"- `{m}` → " + (", ".join(sorted((short(t) for t in g[m]), key=lambda t: (t[0] != "t", t)))
                                      or "—") for m in sorted(g))


def written_map(text: str) -> str:
    return text.split(MAP_BEGIN, 1)[1].split(MAP_END, 1)[0].strip()


def test_the_internals_import_map_is_the_code_s():
    assert written_map(INTERNALS.read_text()) == import_map(graph(ROOT)), \
        "docs/INTERNALS.md's import map differs from the code: run `python tests/test_layering.py`"


if __name__ == "__main__":   # rewrite the map in docs/INTERNALS.md from the code
    text = INTERNALS.read_text()
    head, rest = text.split(MAP_BEGIN, 1)
    INTERNALS.write_text(head + MAP_BEGIN + "\n" + import_map(graph(ROOT)) + "\n" + MAP_END + rest.split(MAP_END, 1)[1])

