"""Figures of runs for papers and slides (`ban plot`), read from their run directories only.

A run's history is its `epoch` events; `RunHistory` holds them per generation with the chain
offsets, so that `ban plot` and `ban export` place an epoch at the same x. The figure has four
panels (any subset):

- curves: test error (%) or perplexity per epoch of the whole chain on one continuous x axis,
  each generation boundary marked by a vertical line and labelled (Teacher, BAN-1, ...), and
  each Ens*k drawn as a dotted level over the generation that completes it. One axis and not
  one facet per generation: a chain is one training in time, the drop at each boundary and
  the level each student ends at against its teacher are read along one line, and with
  several runs overlaid the facets would multiply the legends.
- generations: the paper's view, final test error of Teacher, BAN-1, ... and of each Ens*k.
- loss: train (solid) and test (dashed) loss on a log axis over the same chain axis.
- gradients: the logit-gradient decomposition of eq. 7 (mean |g_y| of the correct class and
  mean ||g_{i!=y}|| of the dark-knowledge classes) per epoch.

matplotlib is an optional dependency (`pip install 'ban[plot]'`); it is imported only when a
figure is drawn. No torch.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.events import read_events
from engine.runs import RunPaths, RunState, gen_label

FORMATS = ("png", "svg", "pdf")
PANELS = ("curves", "generations", "loss", "gradients")
INSTALL_HINT = "ban plot needs matplotlib: python -m pip install 'ban[plot]' (or: python -m pip install matplotlib)"


class PlotError(ValueError):
    """A figure that cannot be made (bad output name, matplotlib missing, nothing to draw)."""


@dataclass
class RunHistory:
    """One run's epochs per generation, deduplicated by (gen, epoch), the last record kept."""
    root: Path
    state: RunState
    epochs: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.state.experiment or self.root.parent.name}/{self.state.run_id or self.root.name}"

    @property
    def metric(self) -> str:
        return self.state.metric

    def planned(self, gen: int) -> int:
        """Epochs of a generation: planned (gen_start) or, when unknown, the last seen."""
        g = self.state.gens.get(gen)
        seen = max((e.get("epoch", 0) for e in self.epochs.get(gen, [])), default=0)
        return max(g.epochs if g else 0, seen)

    def offsets(self) -> dict[int, int]:
        """Chain x of each generation's start: the planned epochs of the generations before it."""
        out, x = {}, 0
        for gen in sorted(self.state.gens):
            out[gen] = x
            x += self.planned(gen)
        return out

    def end(self) -> int:
        return sum(self.planned(g) for g in self.state.gens)

    def series(self, key: str, diagnostic: bool = False) -> dict[int, tuple[list[int], list[float]]]:
        """Per generation: (chain epochs, values) of an epoch field (or diagnostics field)."""
        offsets, out = self.offsets(), {}
        for gen, records in sorted(self.epochs.items()):
            xs, ys = [], []
            for e in records:
                value = (e.get("diagnostics") or {}).get(key) if diagnostic else e.get(key)
                if value is not None:
                    xs.append(offsets.get(gen, 0) + e.get("epoch", 0))
                    ys.append(value)
            if xs:
                out[gen] = (xs, ys)
        return out


def load_history(root: Path) -> RunHistory:
    """The history of a run directory, from its events.jsonl."""
    root = Path(root)
    events = read_events(RunPaths(root).events)
    h = RunHistory(root, RunState().extend(events))
    by_key: dict[tuple[int, int], dict] = {}
    for e in events:
        if e.get("kind") == "epoch" and "gen" in e:
            by_key[(e["gen"], e.get("epoch", 0))] = e
    for (gen, _), e in sorted(by_key.items()):
        h.epochs.setdefault(gen, []).append(e)
    return h


def metric_key(metric: str) -> str:
    return "test_ppl" if metric == "ppl" else "test_err"


def scale(metric: str) -> float:
    """Errors are fractions in events, drawn in percent; perplexities as they are."""
    return 1.0 if metric == "ppl" else 100.0


def output_format(out: Path) -> str:
    fmt = Path(out).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"{out}: expected a file name ending in .{', .'.join(FORMATS)}, found "
                        f"{'.' + fmt if fmt else 'no suffix'}")
    return fmt


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ---- panels ---------------------------------------------------------------------------------

def colour(plt, i_run: int, gen: int, n_runs: int):
    """One colour per generation for one run; one per run when several are overlaid."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[(gen if n_runs == 1 else i_run) % len(cycle)]


def mark_generations(ax, histories: list[RunHistory]) -> None:
    """Vertical lines at generation boundaries, labels over each generation (from the first run;
    other runs' boundaries, where they differ, dotted)."""
    from matplotlib.transforms import blended_transform_factory
    top = blended_transform_factory(ax.transData, ax.transAxes)
    first = histories[0]
    for i, h in enumerate(histories):
        for gen, x in h.offsets().items():
            if i and first.offsets().get(gen) == x:
                continue
            if x > 0:
                ax.axvline(x, color="0.45", lw=0.8, ls="-" if i == 0 else ":", zorder=0)
            if i == 0:
                mid = x + first.planned(gen) / 2
                ax.text(mid, 0.985, gen_label(gen), transform=top, ha="center", va="top", fontsize=8, color="0.25")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(h.end() for h in histories) or 1)
    ax.set_xlabel("epoch (whole chain; generations marked)")


def legend_runs(ax, plt, histories) -> None:
    if len(histories) > 1:
        from matplotlib.lines import Line2D
        ax.legend([Line2D([], [], color=colour(plt, i, 0, len(histories))) for i in range(len(histories))],
                  [h.name for h in histories], fontsize=7, loc="best")


def draw_curves(ax, plt, histories: list[RunHistory]) -> None:
    metric = histories[0].metric
    k, f = metric_key(metric), scale(metric)
    for i, h in enumerate(histories):
        offsets = h.offsets()
        for gen, (xs, ys) in h.series(k).items():
            ax.plot(xs, [f * y for y in ys], marker="o", ms=2.5, lw=1.3, color=colour(plt, i, gen, len(histories)))
        for kk, e in sorted(h.state.ensembles.items()):
            value = e.get(k)
            if value is None or kk not in offsets:
                continue
            x0 = offsets[kk]
            ax.hlines(f * value, x0, x0 + h.planned(kk), colors=colour(plt, i, kk, len(histories)), linestyles=":", lw=1.2)
            ax.annotate(f"Ens*{kk}", (x0 + h.planned(kk), f * value), fontsize=7, ha="right", va="bottom")
    mark_generations(ax, histories)
    ax.set_ylabel("test perplexity" if metric == "ppl" else "test error (%)")
    ax.set_title("test " + ("perplexity" if metric == "ppl" else "error") + " per epoch", fontsize=10)


def draw_generations(ax, plt, histories: list[RunHistory]) -> None:
    metric = histories[0].metric
    k, f = metric_key(metric), scale(metric)
    labels: list[str] = []
    for h in histories:
        for name in [gen_label(g) for g in sorted(h.state.gens)] + [f"Ens*{e}" for e in sorted(h.state.ensembles)]:
            if name not in labels:
                labels.append(name)
    where = {name: i for i, name in enumerate(labels)}
    for i, h in enumerate(histories):
        c = colour(plt, i, 0, len(histories)) if len(histories) > 1 else "C0"
        gens = [(where[g.label], f * g.test) for g in sorted(h.state.gens.values(), key=lambda g: g.gen) if g.test is not None]
        ens = [(where[f"Ens*{kk}"], f * e[k]) for kk, e in sorted(h.state.ensembles.items()) if e.get(k) is not None]
        if gens:
            ax.plot(*zip(*gens), marker="o", color=c, label=h.name)
        if ens:
            ax.plot(*zip(*ens), marker="*", ms=11, ls="none", color=c)
        for x, y in gens + ens:
            if len(histories) == 1:
                ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.margins(y=0.12)
    ax.set_xlabel("generation / ensemble")
    ax.set_ylabel("final test perplexity" if metric == "ppl" else "final test error (%)")
    ax.set_title("per generation, with the ensembles (*)", fontsize=10)


def draw_loss(ax, plt, histories: list[RunHistory]) -> None:
    for i, h in enumerate(histories):
        for key, ls in (("train_loss", "-"), ("test_loss", "--")):
            for gen, (xs, ys) in h.series(key).items():
                ax.plot(xs, ys, ls=ls, lw=1.2, color=colour(plt, i, gen, len(histories)))
    if any(y > 0 for h in histories for _, ys in h.series("train_loss").values() for y in ys):
        from matplotlib.ticker import FuncFormatter
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    mark_generations(ax, histories)
    ax.set_ylabel("loss (log scale)")
    ax.set_title("loss: train (solid), test (dashed)", fontsize=10)


def draw_gradients(ax, plt, histories: list[RunHistory]) -> None:
    drawn = False
    for i, h in enumerate(histories):
        for key, ls in (("grad_correct", "-"), ("grad_dark", "--")):
            for gen, (xs, ys) in h.series(key, diagnostic=True).items():
                ax.plot(xs, ys, ls=ls, lw=1.2, color=colour(plt, i, gen, len(histories)))
                drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no gradient diagnostics recorded", transform=ax.transAxes, ha="center", color="0.4")
    mark_generations(ax, histories)
    ax.set_ylabel("mean logit-gradient size (eq. 7)")
    ax.set_title("gradient: correct class |g_y| (solid), dark knowledge ||g_i≠y|| (dashed)", fontsize=9)


DRAW = {"curves": draw_curves, "generations": draw_generations, "loss": draw_loss, "gradients": draw_gradients}


def figure(histories: list[RunHistory], panels=PANELS):
    """A matplotlib Figure with the panels asked for (2 columns when there are more than one)."""
    plt = import_pyplot()
    unknown = [p for p in panels if p not in DRAW]
    if unknown:
        raise PlotError(f"unknown panel {unknown[0]!r}; expected one of: {', '.join(PANELS)}")
    if not histories or not any(h.epochs for h in histories):
        raise PlotError("nothing to draw: no epoch finished yet in " + ", ".join(str(h.root) for h in histories))
    panels = list(dict.fromkeys(panels))
    cols = 1 if len(panels) == 1 else 2
    rows = (len(panels) + cols - 1) // cols
    plt.rcParams.update({"svg.fonttype": "none", "pdf.fonttype": 42})   # text stays text
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    flat = [a for row in axes for a in row]
    for ax, panel in zip(flat, panels):
        ax.grid(alpha=0.3, lw=0.5)
        DRAW[panel](ax, plt, histories)
    legend_runs(flat[0], plt, histories)   # one legend of the runs, on the first panel
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(", ".join(h.name for h in histories[:4]) + (f" and {len(histories) - 4} more" if len(histories) > 4 else ""),
                 fontsize=10)
    return fig


def save(run_dirs, out: Path, panels=PANELS) -> Path:
    """Draw the runs and write the figure to `out` (format from its suffix), atomically."""
    out = Path(out)
    fmt = output_format(out)
    fig = figure([load_history(d) for d in run_dirs], panels)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=150)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return out


def run_figure_path(run_dir: Path, fmt: str = "png") -> Path:
    """Where a run's own figure goes (the TUI's export key): <run>/figures/chain.<fmt>."""
    return Path(run_dir) / "figures" / f"chain.{fmt}"
