"""Two or more runs compared: their test-error curves overlaid (one colour per run, every
generation on its run's chain axis), the configuration keys that differ (from each run's
experiment.toml snapshot), every generation's and ensemble's test value with its difference
against the first marked run (A), and, when the runs are seeds of one configuration (the same
experiment and configuration hash, as `ban report` groups them), `ban report`'s numbers:
mean ± std over the seeds and the paired difference against the teacher with its 95 % CI.
Keys: l linear/log, 1-9 hide/show run A, B, ..."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, Label, Static

from ban_tui import report
from ban_tui.screens import BACK
from ban_tui.widgets.footer import KeysFooter
from ban_tui.progress import load_plan
from ban_tui.tables import STATUS_MARK, STATUS_STYLE, config_diff, delta_rows, flatten_snapshot, pick, run_letter
from ban_tui.watch import RunsUpdate
from ban_tui.widgets.curves import RICH_COLORS, GEN_COLORS, CurvePlot, gen_offsets, gen_series
from ban_tui.widgets.rows import RowsTable
from engine.runs import gen_label, snapshot_experiment

# ban report's columns, less those every row of one group shares (experiment, config, metric)
SEED_COLUMNS = pick(report.COLUMNS, "column", "n", "value", "vs_teacher", "vs_teacher_boot", "vs_teacher_p",
                    "vs_teacher_verdict")


def run_name(run_dir: Path, state=None) -> str:
    return f"{(state and state.experiment) or run_dir.parent.name}/{(state and state.run_id) or run_dir.name}"


def read_snapshot(run_dir: Path) -> dict[str, str] | None:
    """The run's flattened experiment.toml; None without one (a remote or old run) or unreadable."""
    exp = snapshot_experiment(run_dir)
    return None if exp is None else flatten_snapshot(exp)


def seeds_of_one_config(run_dirs: list[Path]) -> dict | None:
    """`ban report` over the runs when they are seeds of one configuration (one report group:
    same experiment, same configuration hash, two or more seeds): {"caption", "columns", "rows",
    "notes"}; else {"caption"} saying why not. Reads the runs' files (call it off the UI thread)."""
    try:
        runs = report.load_runs(run_dirs)
    except (OSError, ValueError) as exc:
        return {"caption": f"seeds: not computed ({exc})"}
    groups = {(r["name"], r["config"]) for r in runs}
    seeds = {r["state"].seed for r in runs}
    if len(groups) > 1:
        return {"caption": f"not seeds of one configuration ({len(groups)} configurations): no mean ± CI"}
    if len(seeds) < 2:
        return {"caption": "one configuration, one seed: no mean ± CI"}
    rep = report.collect(run_dirs)
    (name, config), = groups
    _, rows = report.table(rep)
    n = max((e["n"] for e in rep["experiments"]), default=0)
    return {"caption": f"seeds of one configuration ({name}, config {config}): {n} ok of {len(seeds)} seeds, "
                       "as `ban report` (err in %)",
            "rows": rows, "notes": report.notes(rep)}


class CompareScreen(Screen):
    BINDINGS = [
        BACK,
        Binding("l", "toggle_log", "Log/linear"),
    ] + [Binding(str(k), f"toggle_run({k - 1})", "Hide/show run", show=k == 1) for k in range(1, 10)]
    DEFAULT_CSS = """
    CompareScreen #legend { height: auto; padding: 0 1; }
    CompareScreen #test-curves { height: 1fr; min-height: 8; }
    CompareScreen #tables { height: auto; max-height: 55%; }
    CompareScreen #side { height: auto; }
    CompareScreen #side > Vertical { width: 1fr; height: auto; }
    CompareScreen .caption { text-style: bold; padding: 0 1; }
    CompareScreen #seeds-notes { padding: 0 1; color: $text-muted; height: auto; }
    """

    def __init__(self, run_dirs: list[Path], **kwargs):
        super().__init__(**kwargs)
        self.run_dirs = [Path(d) for d in run_dirs]
        self.plans = [load_plan(d) for d in self.run_dirs]
        self.configs = [read_snapshot(d) for d in self.run_dirs]
        self.letters = [run_letter(i) for i in range(len(self.run_dirs))]
        self.hidden: set[int] = set()
        self.log_scale = False
        self.ended: tuple | None = None   # the runs' end statuses when the seeds' report was computed
        self.models: dict = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="legend")
        yield CurvePlot("test error (%)", ("test_err", "test_ppl"), id="test-curves")
        with VerticalScroll(id="tables"):
            with Horizontal(id="side"):
                with Vertical(id="deltas-box"):
                    yield Label(f"test at the last epoch, Δ vs {self.letters[0]}", classes="caption")
                    yield RowsTable([("column", "")] + [(f"r{i}", x if not i else f"{x} Δ vs {self.letters[0]}")
                                                        for i, x in enumerate(self.letters)], id="deltas")
                with Vertical(id="diff-box"):
                    yield Label("", classes="caption", id="diff-title")
                    yield RowsTable([("key", "key")] + [(f"r{i}", x) for i, x in enumerate(self.letters)],
                                    id="diff")
            yield Label("seeds: computing...", classes="caption", id="seeds-title")
            yield RowsTable(SEED_COLUMNS, id="seeds")
            yield Static("", id="seeds-notes")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.show_diff()
        self.watch(self.app, "runs", self.show_runs, init=False)

    def on_screen_resume(self) -> None:   # shown, or shown again: draw at the next tick
        for d in self.run_dirs:
            self.app.refresh_run(d)

    def show_diff(self) -> None:
        rows = config_diff(self.configs)
        missing = [x for x, c in zip(self.letters, self.configs) if c is None]
        title = (f"config: {len(rows)} key{'s' * (len(rows) != 1)} differ" if rows else
                 "config: every key the same")
        if missing:
            title += f" (no snapshot: {', '.join(missing)})"
        self.query_one("#diff-title", Label).update(title)
        self.query_one("#diff", RowsTable).show(rows, [r["key"] for r in rows])

    def show_runs(self, update: RunsUpdate) -> None:
        """Draw again when a compared run changed, while this screen is shown."""
        if not self.is_current or not any(update.touches(d) for d in self.run_dirs):
            return
        self.models = {d: update.models[d] for d in self.run_dirs if d in update.models}
        self.draw()
        ended = tuple((m.state.end or {}).get("status") for m in self.models.values())
        if ended != self.ended:   # a run ended (or was resumed) since: the seeds' numbers change
            self.ended = ended
            self.compute_seeds([d for d in self.run_dirs if d in self.models and self.models[d].source.local])

    def draw(self) -> None:
        """Curves, legend and deltas from the models (under the watcher's lock)."""
        series, bounds, legend = [], {}, Text()
        ref = None
        for i, d in enumerate(self.run_dirs):
            model = self.models.get(d)
            color = RICH_COLORS[i % len(RICH_COLORS)] + (" strike dim" if i in self.hidden else "")
            status = model.status() if model else "not followed"
            legend.append(f"{self.letters[i]} ━ ", style=color).append(run_name(d, model and model.state))
            legend.append(f"  {STATUS_MARK.get(status, '')} {status}", style=STATUS_STYLE.get(status, ""))
            legend.append("  (reference)\n" if i == 0 else "\n")
            if model is None:
                continue
            offsets = gen_offsets(model.state.gens, self.plans[i])
            ref = offsets if ref is None else ref
            for g, x in offsets.items():
                if g > 0:
                    bounds[gen_label(g) if ref.get(g) == x else f"{self.letters[i]}:{gen_label(g)}"] = x
            if i not in self.hidden:
                series += gen_series(model.curves, ("test_err", "test_ppl"), offsets, log=self.log_scale,
                                     color=lambda g, i=i: GEN_COLORS[i % len(GEN_COLORS)],
                                     prefix=f"{self.letters[i]} ", marker="braille")
        legend.rstrip()
        self.query_one("#legend", Static).update(legend)
        plot = self.query_one(CurvePlot)
        metric = next((m.state.metric for m in self.models.values()), "err")
        plot.title = "test perplexity" if metric == "ppl" else "test error (%)"
        plot.draw(series, bounds, self.log_scale)
        rows = delta_rows([m.state for m in self.models.values()])
        self.query_one("#deltas", RowsTable).show(rows, [r["column"] for r in rows])

    @work(thread=True, exclusive=True, group="compare-seeds")
    def compute_seeds(self, run_dirs: list[Path]) -> None:
        found = seeds_of_one_config(run_dirs) if len(run_dirs) > 1 else {
            "caption": "seeds: only local runs are grouped (as `ban report`)"}
        self.app.call_from_thread(self.show_seeds, found)

    def show_seeds(self, found: dict) -> None:
        if not self.is_mounted:
            return
        self.query_one("#seeds-title", Label).update(found["caption"])
        table = self.query_one("#seeds", RowsTable)
        rows = found.get("rows", [])
        table.show(rows, [r["column"] for r in rows])
        table.display = bool(rows)
        self.query_one("#seeds-notes", Static).update("\n".join(found.get("notes", [])))

    def redraw(self) -> None:
        if self.models:
            with self.app.watcher.lock:
                self.draw()

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.redraw()

    def action_toggle_run(self, i: int) -> None:
        if i < len(self.run_dirs):
            self.hidden.symmetric_difference_update({i})
            self.redraw()
