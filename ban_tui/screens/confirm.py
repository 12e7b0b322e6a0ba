"""A question with a few answers, each a key (y/n, save/discard/cancel): a modal screen that
dismisses with the chosen answer's key (escape: the last answer, which is always the safe one)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class Confirm(ModalScreen[str]):
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: auto; max-width: 90%; height: auto; border: thick $warning; padding: 1 2;
                         background: $surface; }
    Confirm Label { width: auto; margin-bottom: 1; }
    Confirm Horizontal { height: auto; width: auto; }
    Confirm Button { margin: 0 1; min-width: 10; }
    """

    def __init__(self, question: str, answers: list[tuple[str, str]], **kwargs):
        """answers: [(key, label)]; the last one is what escape answers."""
        super().__init__(**kwargs)
        self.question, self.answers = question, answers
        for key, label in answers:
            self._bindings.bind(key, f"answer({key!r})", label)
        self._bindings.bind("escape", f"answer({answers[-1][0]!r})", answers[-1][1])

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            with Horizontal():
                for key, label in self.answers:
                    yield Button(f"{label} ({key})", id=f"answer-{key}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id.removeprefix("answer-"))

    def action_answer(self, key: str) -> None:
        self.dismiss(key)


YES_NO = [("y", "Yes"), ("n", "No")]
