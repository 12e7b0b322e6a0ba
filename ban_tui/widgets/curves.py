"""Live training curves of a run: one series per generation, train and test (plotext)."""
from __future__ import annotations

from rich.text import Text
from textual_plotext import PlotextPlot

from engine.runs import gen_label

GEN_COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow", "white")
RICH_COLORS = ("cyan", "dark_orange", "green", "magenta", "red", "blue", "yellow", "white")


def gen_color(gen: int) -> str:
    return GEN_COLORS[gen % len(GEN_COLORS)]


def legend(gens) -> Text:
    """One line naming the colour of each generation (plotext's own legend would hide the curves)."""
    text = Text("train ⣿ line, test • dots:  ")
    for gen in sorted(gens):
        text.append(f"■ {gen_label(gen)}  ", style=RICH_COLORS[gen % len(RICH_COLORS)])
    return text


class CurvePlot(PlotextPlot):
    """Plots model.curves[key] for `keys` (e.g. train_loss and test_loss), every generation."""

    def __init__(self, title: str, keys: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        self.title, self.keys = title, keys
        self.plotted: dict[str, int] = {}   # "BAN-1 test_err" -> points drawn (what tests check)

    def show(self, curves: dict[str, dict]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.title(self.title)
        plt.xlabel("epoch")
        self.plotted = {}
        for key in self.keys:
            for gen, series in sorted(curves.get(key, {}).items()):
                if series:
                    xs, ys = zip(*series)
                    plt.plot(list(xs), list(ys), color=gen_color(gen),
                             marker="dot" if key.startswith("test") else "braille")
                    self.plotted[f"{gen_label(gen)} {key}"] = len(xs)
        self.refresh()
