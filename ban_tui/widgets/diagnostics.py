"""The gradient decomposition per generation: grad_correct vs grad_dark (eq. 7) as sparklines
over the epochs, one row per generation that has a teacher."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline

from ban_tui.watch import DIAGNOSTIC_KEYS
from engine.runs import gen_label

PARTS = tuple((key.removeprefix("grad_"), key) for key in DIAGNOSTIC_KEYS)   # (widget id, key)


class DiagnosticsRow(Horizontal):
    DEFAULT_CSS = """
    DiagnosticsRow { height: 1; }
    DiagnosticsRow .gen { width: 8; }
    DiagnosticsRow .value { width: 8; text-align: right; }
    DiagnosticsRow Sparkline, DiagnosticsRow .part { width: 1fr; margin: 0 1; }
    """

    def __init__(self, gen: int | None, series: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gen, self.series = gen, series

    def compose(self) -> ComposeResult:
        if self.series is None:  # the heading
            yield Label("", classes="gen")
            for _, key in PARTS:
                yield Label(key, classes="part")
                yield Label("last", classes="value")
            return
        yield Label(gen_label(self.gen), classes="gen")
        for name, key in PARTS:
            data = list(self.series[key])
            yield Sparkline(data, id=name)
            yield Label(self.last(data), classes="value", id=f"{name}-value")

    @staticmethod
    def last(data) -> str:
        return f"{data[-1]:.4g}" if data else "-"

    def show(self, series: dict) -> None:
        for name, key in PARTS:
            data = list(series[key])
            self.query_one(f"#{name}", Sparkline).data = data
            self.query_one(f"#{name}-value", Label).update(self.last(data))


class DiagnosticsPanel(VerticalScroll):
    """Shows model.diagnostics: {gen: {"grad_correct": deque, "grad_dark": deque}}."""

    DEFAULT_CSS = "DiagnosticsPanel { height: auto; max-height: 8; }"

    def compose(self) -> ComposeResult:
        yield DiagnosticsRow(None)

    def show(self, diagnostics: dict) -> None:
        rows = {row.gen: row for row in self.query(DiagnosticsRow) if row.gen is not None}
        for gen in sorted(diagnostics):
            if gen in rows:
                rows[gen].show(diagnostics[gen])
            else:
                self.mount(DiagnosticsRow(gen, {k: list(v) for k, v in diagnostics[gen].items()}))
