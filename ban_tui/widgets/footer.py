"""The footer of every screen: the shown keys of the focused screen, drawn as one line of text.

One widget, not Textual's Footer (a widget per key, recomposed on every focus change): that
footer was a fifth of the app's start-up CPU. Below WIDE columns the keys sit closer together;
when they still do not fit, the last ones give way to "…" and `? keys` stays at the right end, so
an 80-column terminal always shows how to list them all. A click on a key presses it.
"""
from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget

WIDE = 140
HELP_KEY = "question_mark"


class KeysFooter(Widget):
    COMPONENT_CLASSES = {"keys-footer--key"}
    DEFAULT_CSS = """
    KeysFooter {
        dock: bottom;
        height: 1;
        background: $footer-background;
        color: $footer-foreground;
        .keys-footer--key { color: $footer-key-foreground; text-style: bold; }
    }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spans: list[tuple[int, int, str]] = []   # (start, end, key) of each key drawn: clicks

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen:
            self.refresh()

    def keys(self) -> list[tuple[str, str, str, bool]]:
        """(key, shown key, description, enabled) of each shown binding, one per action; the
        command palette's last."""
        seen, out = set(), []
        bindings = self.screen.active_bindings
        for _node, binding, enabled, _tooltip in bindings.values():
            if binding.show and binding.action not in seen:
                seen.add(binding.action)
                out.append((binding.key, self.app.get_key_display(binding), binding.description, enabled))
        palette = bindings.get(self.app.COMMAND_PALETTE_BINDING) if self.app.ENABLE_COMMAND_PALETTE else None
        if palette is not None:
            binding = palette[1]
            out.append((binding.key, self.app.get_key_display(binding), binding.description, palette[2]))
        return out

    def render(self) -> Text:
        width, gap = self.size.width, (2 if self.size.width >= WIDE else 1)
        key_style = self.get_component_rich_style("keys-footer--key")
        keys = self.keys()
        tail = [k for k in keys if k[0] == HELP_KEY]
        body = [k for k in keys if k[0] != HELP_KEY]

        def length(items) -> int:
            return sum(len(shown) + 1 + len(desc) + gap for _k, shown, desc, _e in items) + 1

        dropped = False
        while body and length(body + tail) + (2 if dropped else 0) > width:
            body.pop()
            dropped = True
        text, self.spans = Text(" "), []
        for key, shown, desc, enabled in body + ([("", "…", "", True)] if dropped else []) + tail:
            start = len(text)
            dim = Style(dim=not enabled)
            text.append(shown, style=key_style + dim)
            if desc:
                text.append(" " + desc, style=dim)
            if key:
                self.spans.append((start, len(text), key))
            text.append(" " * gap)
        return text

    def on_click(self, event: events.Click) -> None:
        key = next((k for start, end, k in self.spans if start <= event.x < end), None)
        if key is not None:
            self.app.simulate_key(key)
