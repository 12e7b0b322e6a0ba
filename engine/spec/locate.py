"""Line and column of a key path in a TOML text (tomllib keeps no positions)."""
from __future__ import annotations

import re


class Locator:
    """Finds the line and column of a key path in the TOML text (tomllib keeps no positions).

    Works on the shapes configs use: `[[experiment]]` / `[[experiment.generation]]` /
    `[section]` headers, `key = value` lines and inline tables `key = { sub = ... }`.
    """

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        # sections: list of (header name, array index within that name, start line index)
        self.sections = []
        counts: dict[str, int] = {}
        parent_idx: dict[str, int] = {}
        for i, line in enumerate(self.lines):
            m = self.HEADER.match(line)
            if not m:
                continue
            name = m.group(2).replace('"', "").replace("'", "").replace(" ", "")
            if m.group(1) == "[[":
                if name == "experiment.generation":
                    key = f"experiment.generation@{counts.get('experiment', 0) - 1}"
                    n = parent_idx.get(key, 0)
                    parent_idx[key] = n + 1
                    self.sections.append((name, (counts.get("experiment", 0) - 1, n), i))
                else:
                    n = counts.get(name, 0)
                    counts[name] = n + 1
                    self.sections.append((name, n, i))
            else:
                self.sections.append((name, None, i))

    def _section_range(self, name, index):
        for j, (n, idx, start) in enumerate(self.sections):
            if n == name and idx == index:
                end = len(self.lines)
                for n2, _, s2 in self.sections[j + 1:]:
                    end = s2
                    break
                return start, end
        return None

    def find(self, path: tuple) -> tuple[int | None, int | None]:
        """path like ("experiment", 2, "optimizer", "lr") or ("experiment", 0, "generation", 1, "model")."""
        rng, keys = None, list(path)
        if len(path) >= 4 and path[0] == "experiment" and path[2] == "generation" and isinstance(path[3], int):
            rng, keys = self._section_range("experiment.generation", (path[1], path[3])), list(path[4:])
        elif len(path) >= 2 and path[0] == "experiment" and isinstance(path[1], int):
            rng, keys = self._section_range("experiment", path[1]), list(path[2:])
        elif path and path[0] in ("defaults", "hosts"):
            if path[0] == "hosts" and len(path) >= 2:
                rng, keys = self._section_range(f"hosts.{path[1]}", None), list(path[2:])
            if rng is None:
                rng, keys = self._section_range(path[0], None), list(path[1:])
        if rng is None:
            rng = (0, self.sections[0][2] if self.sections else len(self.lines))
        start, end = rng
        if not keys:
            return start + 1, 1
        first = str(keys[0])
        pat = re.compile(r"^\s*[\"']?" + re.escape(first) + r"[\"']?\s*=")
        for i in range(start, end):
            if pat.match(self.lines[i]):
                col = self.lines[i].index(first) + 1
                for sub in keys[1:]:
                    m = re.search(r"[{,]\s*[\"']?" + re.escape(str(sub)) + r"[\"']?\s*=", self.lines[i])
                    if m:
                        col = m.start() + 2 + (len(m.group(0)) - len(m.group(0).lstrip("{, ")) - 1)
                return i + 1, col
        # a sub-table header such as [experiment.dataset]
        return start + 1, 1
