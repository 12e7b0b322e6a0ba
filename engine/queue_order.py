"""Which runs of a runs directory wait in its queue, oldest first, read from their `queued`
markers (engine/scheduler.py writes them and starts the runs; engine/runs.py reads a run's
position). Torch-free, and imports nothing of the engine: both of those import it.
"""
from __future__ import annotations

import json
from pathlib import Path

QUEUED = "queued"   # <runs_dir>/<exp>/<run-id>/queued: {"submitted", "argv", "need", "cwd"}


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run_dirs(runs_dir: Path, name: str) -> list[Path]:
    return [p.parent for p in Path(runs_dir).glob(f"*/*/{name}")]


def queued(runs_dir: Path) -> list[tuple[Path, dict]]:
    """Queued runs, oldest first."""
    found = [(root, read_json(root / QUEUED)) for root in run_dirs(runs_dir, QUEUED)]
    found = [(root, m) for root, m in found if isinstance(m, dict)]
    return sorted(found, key=lambda rm: (rm[1].get("submitted", 0), str(rm[0])))


def queue_position(root: Path) -> int | None:
    """1 for the next run to start; None when the run is not queued."""
    root = Path(root)
    if not (root / QUEUED).exists():
        return None
    order = [r for r, _ in queued(root.parent.parent)]
    return order.index(root) + 1 if root in order else None
