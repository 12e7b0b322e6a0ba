"""The footer of every screen: compact (keys closer together) below WIDE columns, so that a
100- or 80-column terminal keeps more of its keys in view (`?` lists them all)."""
from __future__ import annotations

from textual import events
from textual.widgets import Footer

WIDE = 140


class KeysFooter(Footer):
    def on_resize(self, event: events.Resize) -> None:
        self.compact = event.size.width < WIDE
