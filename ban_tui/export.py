"""Runs exported to the tools people already use (`ban export`), from their stored events only.

TensorBoard: one log directory per (run, generation), ``DIR/<experiment>/<run_id>/<gen label>``,
so TensorBoard's run selector shows and hides each generation; the scalars are the epoch
event's fields under their event names (train_loss, train_err, test_loss, test_err or test_ppl,
lr, seconds, samples_per_s; errors as the fractions the events hold) and the gradient
diagnostics as ``diagnostics/<key>``. The step is the epoch on the whole chain (the x of
`ban plot`); the wall time is the event's. The ensembles go to ``.../ensembles`` as
``Ens*k/test_err`` at the chain's last epoch. A run exported again replaces its earlier export
(written beside, then renamed over it).

The `tensorboard` package writes the event files (its own writer; no torch, no TensorFlow):
an optional dependency, `pip install 'ban[export]'`. The engine depends on none of this.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from engine.runs import gen_label
from ban_tui.plot import RunHistory, load_history

SCALARS = ("train_loss", "train_err", "test_loss", "test_err", "test_ppl", "lr", "seconds", "samples_per_s")
INSTALL_HINT = "ban export --tensorboard needs tensorboard: python -m pip install 'ban[export]' (or: python -m pip install tensorboard)"


class ExportError(ValueError):
    pass


def tensorboard_parts():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ExportError(INSTALL_HINT) from None
    return EventFileWriter, event_pb2, summary_pb2


def scalar_points(h: RunHistory) -> dict[str, list[tuple[str, int, float, float]]]:
    """Per log directory (a generation's label, or "ensembles"): (tag, step, wall time, value)."""
    offsets, out = h.offsets(), {}
    for gen, records in sorted(h.epochs.items()):
        points = out.setdefault(gen_label(gen), [])
        for e in records:
            step, ts = offsets.get(gen, 0) + e.get("epoch", 0), e.get("ts", 0.0)
            fields = [(k, e.get(k)) for k in SCALARS]
            fields += [(f"diagnostics/{k}", v) for k, v in (e.get("diagnostics") or {}).items()]
            points += [(tag, step, ts, float(v)) for tag, v in fields if isinstance(v, (int, float))]
    for k, e in sorted(h.state.ensembles.items()):
        for key in ("test_err", "test_ppl", "test_loss"):
            if isinstance(e.get(key), (int, float)):
                out.setdefault("ensembles", []).append((f"Ens*{k}/{key}", h.end(), e.get("ts", 0.0), float(e[key])))
    return out


def write_tensorboard_run(h: RunHistory, target: Path) -> Path:
    """Write one run's scalars under `target` (replacing an earlier export of it)."""
    EventFileWriter, event_pb2, summary_pb2 = tensorboard_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for logdir, points in scalar_points(h).items():
            writer = EventFileWriter(str(tmp / logdir))
            for tag, step, ts, value in points:
                summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
                writer.add_event(event_pb2.Event(wall_time=ts, step=step, summary=summary))
            writer.close()
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def tensorboard(run_dirs, out_dir: Path) -> list[Path]:
    """Export runs to TensorBoard log directories under out_dir; the directories written."""
    tensorboard_parts()   # say it is missing before anything is written
    written = []
    for d in run_dirs:
        h = load_history(d)
        if not h.epochs and not h.state.ensembles:
            raise ExportError(f"{d}: no epoch finished yet; nothing to export")
        written.append(write_tensorboard_run(h, Path(out_dir) / h.name))
    return written
