"""Runs exported to the tools people already use (`ban export`), from their stored events only.

TensorBoard: one log directory per (run, generation), ``DIR/<experiment>/<run_id>/<gen label>``,
so TensorBoard's run selector shows and hides each generation; the scalars are the epoch
event's fields under their event names (train_loss, train_err, test_loss, test_err or test_ppl,
lr, seconds, samples_per_s; errors as the fractions the events hold) and the gradient
diagnostics as ``diagnostics/<key>``. The step is the epoch on the whole chain (the x of
`ban plot`); the wall time is the event's. The ensembles go to ``.../ensembles`` as
``Ens*k/test_err`` at the chain's last epoch. A run exported again replaces its earlier export
(written beside, then renamed over it).

MLflow: one MLflow run per chain in the MLflow experiment of the chain's name, holding the
chain's config (the snapshot, flattened as in the comparison) as params and the ensembles as
``Ens-k/test_err`` (MLflow keys take no ``*``); one nested run per generation (tag
``mlflow.parentRunId``) named by its label, with its objective, model and teacher as params and
the same scalars as TensorBoard at the same steps and times. Every run carries the tag
``ban.run`` (experiment/run id): an export again writes the new runs first, then deletes the
earlier export's; a failure deletes what it had written. The store is any tracking URI
(``sqlite:///mlflow.db``, ``http://host:5000``) or a path: a sqlite database there (a
directory: DIR/mlflow.db). MLflow 3 refuses its plain-file store unless told otherwise.

The `tensorboard` package writes the event files (its own writer; no torch, no TensorFlow):
an optional dependency, `pip install 'ban[export]'`; MLflow's own client writes the MLflow
runs, `pip install 'ban[mlflow]'`. The engine depends on none of this.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

from engine.events import read_events
from engine.runs import RunPaths, gen_label, snapshot_experiment
from ban_tui.plot import RunHistory, load_history
from ban_tui.report import config_key
from ban_tui.tables import flatten_snapshot

SCALARS = ("train_loss", "train_err", "test_loss", "test_err", "test_ppl", "lr", "seconds", "samples_per_s")
INSTALL_HINT = "ban export --tensorboard needs tensorboard: python -m pip install 'ban[export]' (or: python -m pip install tensorboard)"
MLFLOW_HINT = ("ban export --mlflow needs mlflow: python -m pip install 'ban[mlflow]' "
               "(or: python -m pip install mlflow-skinny sqlalchemy alembic)")
MLFLOW_STATUS = {"ok": "FINISHED", "cancelled": "KILLED", "failed": "FAILED", "dead": "FAILED"}
METRICS_BATCH, PARAMS_BATCH = 1000, 100   # the most MLflow's log_batch takes in one call


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


def exportable(run_dirs) -> list[RunHistory]:
    """The runs' histories; a run with nothing to export is refused before anything is written."""
    histories = [load_history(d) for d in run_dirs]
    for h in histories:
        if not h.epochs and not h.state.ensembles:
            raise ExportError(f"{h.root}: no epoch finished yet; nothing to export")
    return histories


def tensorboard(run_dirs, out_dir: Path) -> list[Path]:
    """Export runs to TensorBoard log directories under out_dir; the directories written."""
    tensorboard_parts()   # say it is missing before anything is written
    return [write_tensorboard_run(h, Path(out_dir) / h.name) for h in exportable(run_dirs)]


# ---- MLflow ---------------------------------------------------------------------------------

def tracking_uri(target: str) -> str:
    """A tracking URI as given, or a path: a sqlite database (a directory: DIR/mlflow.db)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # sqlite:///..., http://..., file:..., databricks:...
        return target
    path = Path(target).expanduser().resolve()
    if path.is_dir() or not path.suffix:
        path = path / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def mlflow_key(key: str) -> str:
    """MLflow names take letters, digits, _ - . / : and spaces; anything else becomes _."""
    return re.sub(r"[^\w\-./: ]", "_", key)


def mlflow_parts():
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError:
        raise ExportError(MLFLOW_HINT) from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)   # not its INFO lines on creating a database
    return MlflowClient, Metric, Param


def mlflow_runs(h: RunHistory) -> list[dict]:
    """The MLflow runs of one chain: the chain's first, then one per generation, each as
    {name, tags, params, metrics: [(key, step, wall time, value)], start, end} (times in s)."""
    exp = snapshot_experiment(h.root)
    status = h.state.status()
    base = {"ban.run": h.name, "ban.run_dir": str(h.root), "ban.status": status}
    points = scalar_points(h)
    out = [{"name": h.state.run_id or h.root.name, "status": status,
            "tags": base | {"ban.seed": str(h.state.seed), "ban.config": config_key(exp, read_events(RunPaths(h.root).events))},
            "params": flatten_snapshot(exp) if exp is not None else {},
            "metrics": [(tag.replace("Ens*", "Ens-"), step, ts, v) for tag, step, ts, v in points.pop("ensembles", [])],
            "start": h.state.started, "end": h.state.last_ts}]
    for gen, g in sorted(h.state.gens.items()):
        records = h.epochs.get(gen, [])
        out.append({"name": g.label, "status": status if not g.done else "ok",
                    "tags": base | {"ban.gen": str(gen)},
                    "params": {"objective": g.objective, "model": g.model, "epochs": str(g.epochs),
                               "teacher": "" if g.teacher is None else gen_label(g.teacher)},
                    "metrics": points.get(g.label, []),
                    "start": records[0].get("ts") if records else None,
                    "end": records[-1].get("ts") if records else None})
    return out


def mlflow(run_dirs, target: str) -> tuple[str, list[str]]:
    """Export runs to an MLflow tracking store; (the tracking URI, the chains' MLflow run ids)."""
    MlflowClient, Metric, Param = mlflow_parts()   # say it is missing before anything is written
    histories = exportable(run_dirs)
    uri = tracking_uri(target)
    client = MlflowClient(tracking_uri=uri)
    ms = lambda t: None if t is None else int(t * 1000)
    written = []
    for h in histories:
        name = h.state.experiment or h.root.parent.name
        found = client.get_experiment_by_name(name)
        eid = found.experiment_id if found is not None else client.create_experiment(name)
        earlier = [r.info.run_id for r in client.search_runs([eid], filter_string=f"tags.`ban.run` = '{h.name}'",
                                                             max_results=10_000)]
        created: list[str] = []
        try:
            parent = None
            for r in mlflow_runs(h):
                tags = r["tags"] | ({"mlflow.parentRunId": parent} if parent else {})
                run = client.create_run(eid, start_time=ms(r["start"]), tags=tags, run_name=r["name"])
                run_id = run.info.run_id
                created.append(run_id)
                params = [Param(mlflow_key(k), str(v)[:6000]) for k, v in r["params"].items()]
                metrics = [Metric(mlflow_key(k), v, ms(ts) or 0, step) for k, step, ts, v in r["metrics"]]
                for i in range(0, len(params), PARAMS_BATCH):
                    client.log_batch(run_id, params=params[i:i + PARAMS_BATCH])
                for i in range(0, len(metrics), METRICS_BATCH):
                    client.log_batch(run_id, metrics=metrics[i:i + METRICS_BATCH])
                if r["status"] in MLFLOW_STATUS:
                    client.set_terminated(run_id, MLFLOW_STATUS[r["status"]], end_time=ms(r["end"]))
                parent = parent or run_id
        except BaseException:
            for run_id in created:
                client.delete_run(run_id)
            raise
        for run_id in earlier:
            client.delete_run(run_id)
        written.append(created[0])
    return uri, written
