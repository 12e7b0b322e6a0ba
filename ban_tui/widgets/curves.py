"""Live training curves of a run: one series per generation, train and test (plotext).

The whole chain lies on one continuous x axis (the epochs of the chain, each generation after
the one before it), with a dotted line and the generation's name where each one starts. One
facet per generation was the other choice; it was not taken because at 100 columns a facet per
generation of a 4-generation chain leaves each one ~20 columns, and because the point of a
Born-Again chain is how each student compares with its teacher's end, which is read best where
the student's curve starts right after the teacher's. Drawing every generation over the same
epoch axis (as before) hid all but the last one drawn.

plotext (textual_plotext) is imported with this module, which only the monitor and the
comparison import: the first frame of the app does not pay for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text
from textual_plotext import PlotextPlot

from engine.runs import gen_label

GEN_COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow", "white")
RICH_COLORS = ("cyan", "dark_orange", "green", "magenta", "red", "blue", "yellow", "white")
MAX_TICKS = 10


def gen_color(gen: int) -> str:
    return GEN_COLORS[gen % len(GEN_COLORS)]


def legend(gens, hidden=frozenset()) -> Text:
    """One line naming the colour of each generation (plotext's own legend would hide the curves);
    a hidden generation is struck through, with the number key that shows it again."""
    text = Text("train ⣿ line, test • dots:  ")
    for gen in sorted(gens):
        style = RICH_COLORS[gen % len(RICH_COLORS)] + (" strike dim" if gen in hidden else "")
        text.append(f"{gen % 10}:■ {gen_label(gen)}  ", style=style)
    return text


def gen_offsets(gens: dict, plan=None) -> dict[int, int]:
    """Where each generation starts on the chain's axis: the epochs of the generations before it
    (a started generation's own count, else the planned one, else the epochs it has run)."""
    lengths = {k: p.epochs for k, p in enumerate(plan or [])}
    for k, g in gens.items():
        lengths[k] = g.epochs or lengths.get(k, 0) or g.epoch
    offsets, x = {}, 0
    for k in sorted(lengths):
        offsets[k], x = x, x + lengths[k]
    return offsets


def int_ticks(end: int) -> list[int]:
    """At most MAX_TICKS integer epochs from 0 to `end` (plotext's own ticks are fractional)."""
    step = max(1, math.ceil(end / MAX_TICKS))
    return list(range(0, end + 1, step))


def scaled(key: str, value: float) -> float:
    """Errors are shown in %, as in every table; losses and perplexities as they are."""
    return 100.0 * value if key.endswith("_err") else value


@dataclass(frozen=True)
class Series:
    """One curve: its name (what tests check), points (x on the drawn axis, y as shown), colour
    and marker (braille for a line, dot for dots)."""
    name: str
    points: list[tuple[float, float]]
    color: str
    marker: str = "braille"


def gen_series(curves: dict[str, dict], keys, offsets: dict[int, int], hidden=frozenset(), log: bool = False,
               color=gen_color, prefix: str = "", marker: str | None = None) -> list[Series]:
    """The series of `keys` (train_err, test_err, ...) of every shown generation of one run, each
    on the chain's axis (offsets); test series dotted unless `marker` says. `color(gen)` and
    `prefix` tell runs apart."""
    out = []
    for key in keys:
        for gen, series in sorted(curves.get(key, {}).items()):
            points = [(offsets.get(gen, 0) + x, scaled(key, y)) for x, y in series if not log or y > 0]
            if gen not in hidden and points:
                out.append(Series(f"{prefix}{gen_label(gen)} {key}", points, color(gen),
                                  marker or ("dot" if key.startswith("test") else "braille")))
    return out


class CurvePlot(PlotextPlot):
    """Draws series on one axis with integer epoch ticks and labelled vertical boundaries (the
    monitor: every shown generation of a run on the chain's axis; the comparison: every marked
    run's test error)."""

    def __init__(self, title: str, keys: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        self.title, self.keys = title, keys
        self.plotted: dict[str, int] = {}   # "BAN-1 test_err" -> points drawn (what tests check)
        self.boundaries: dict[str, int] = {}  # "BAN-1" -> x where it starts
        self.ticks: list[int] = []
        self.log_scale = False

    def show(self, curves: dict[str, dict], offsets: dict[int, int] | None = None,
             hidden=frozenset(), log: bool = False) -> None:
        """One run: every shown generation of `keys`, boundaries where each generation starts."""
        offsets = offsets or {}
        bounds = {gen_label(g): x for g, x in sorted(offsets.items()) if g > 0}
        self.draw(gen_series(curves, self.keys, offsets, hidden, log), bounds, log, max(offsets.values(), default=0))

    def draw(self, series: list[Series], boundaries: dict[str, int], log: bool = False, end: float = 0) -> None:
        """Every series; a dotted line labelled with its name at each boundary within the axis."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title + (" (log)" if log else ""))
        plt.xlabel("epoch of the chain")
        self.plotted, self.log_scale, top = {}, log, 0.0
        for s in series:
            xs, ys = zip(*s.points)
            plt.plot(list(xs), list(ys), color=s.color, marker=s.marker)
            self.plotted[s.name] = len(xs)
            top, end = max(top, *ys), max(end, *xs)
        if log:
            plt.yscale("log")
        self.ticks = int_ticks(int(end))
        plt.xticks(self.ticks, [str(t) for t in self.ticks])
        self.boundaries = {label: x for label, x in boundaries.items() if x <= end}
        for label, x in self.boundaries.items():
            plt.vline(x, "gray")
            if top > 0:
                plt.text(label, x, top, color="gray", alignment="left")
        self.refresh()
