"""The experiments tab: the experiments of the config, the chain form, live validation, save and
launch. The file on disk changes only on save, through ban_tui.config_edit (comments kept).

The form is mounted just after the first frame (textual.lazy.Lazy, holding its place meanwhile):
its fifty-odd widgets were a third of the time to the first frame."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.lazy import Lazy
from textual.widgets import Button, Label, OptionList, Static
from tomlkit.exceptions import TOMLKitError

from ban_tui import config_edit as ce
from ban_tui.messages import ConfigChanged
from ban_tui.tables import ellipsize
from ban_tui.screens.confirm import Confirm
from ban_tui.widgets.chain_form import ChainForm

NEW = "+ new chain"
SAVE_DISCARD_CANCEL = [("s", "Save"), ("d", "Discard"), ("c", "Cancel")]
NAME_WIDTH = 30          # at most, in the experiment list (34 columns wide; 24 under 100 columns)
VALIDATE_SECONDS = 0.25   # validation waits for a pause in typing (it re-reads the whole config)


class FormSlot(Lazy):
    """Holds the form's place (blank, its height) until the form is mounted after the first frame."""

    def render(self) -> str:
        return ""


class ExperimentsPane(Horizontal):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+r", "launch", "Launch"),
        Binding("ctrl+n", "new", "New chain"),
        Binding("ctrl+g", "add_generation", "Add generation"),
    ]
    DEFAULT_CSS = """
    ExperimentsPane #experiment-list { width: 34; }
    ExperimentsPane #experiment-list OptionList { height: 1fr; }
    ExperimentsPane #editor { width: 1fr; }
    ExperimentsPane #editor > FormSlot { display: block; height: 1fr; }
    ExperimentsPane #problems { height: auto; max-height: 8; padding: 0 1; }
    ExperimentsPane #actions { height: auto; }
    ExperimentsPane #save-state { padding: 1 2; }
    """

    def __init__(self, config_path: Path, **kwargs):
        super().__init__(**kwargs)
        self.config_path = Path(config_path)
        self.text = self._read()          # the file as last read or saved
        self.edited = self.text           # the text with the form's draft applied
        self.problems: list = []
        self.field_errors: dict[str, str] = {}
        names = ce.experiment_names(self.doc())
        self.draft = ce.draft_of(self.doc(), names[0]) if names else ce.new_draft(self.doc())
        self._pending = None   # the timer of the debounced validation
        self.form = ChainForm(self.draft, id="form")
        self.name_width = NAME_WIDTH   # names in the list are cut to this (_fit_names)

    # ---- the file ----
    def _read(self) -> str:
        try:
            return self.config_path.read_text()
        except FileNotFoundError:
            return ""

    def doc(self):
        try:
            return ce.parse(self.text)
        except TOMLKitError:   # a broken file: the problems panel shows the validator's message
            return ce.parse("")

    @property
    def dirty(self) -> bool:
        return self.edited != self.text

    # ---- layout ----
    def compose(self) -> ComposeResult:
        with Vertical(id="experiment-list"):
            yield Label(f"experiments in {self.config_path}")
            yield OptionList(*self._options(), id="experiments")
        with Vertical(id="editor"):
            yield FormSlot(self.form)
            yield Static("", id="problems")
            with Horizontal(id="actions"):
                yield Button("Save", id="save", variant="primary", tooltip="ctrl+s")
                yield Button("Launch", id="launch", variant="success", tooltip="ctrl+r")
                yield Static("", id="save-state")

    def _names(self) -> list[str]:
        return ce.experiment_names(self.doc()) + [NEW]

    def _options(self) -> list[str]:
        # prompts, not option ids: a broken file may hold a name twice (the problems panel says so);
        # a long name is cut with an ellipsis (never wrapped mid-word), chosen by its index
        return [ellipsize(name, self.name_width) for name in self._names()]

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_names)

    def _fit_names(self) -> None:
        """Cut the names to the list's width now (24 or 34 columns, by the terminal's width)."""
        options = self.query_one("#experiments", OptionList)
        width = min(NAME_WIDTH, options.scrollable_content_region.width - 2) if options.size.width else NAME_WIDTH
        if width > 0 and width != self.name_width:
            self.name_width = width
            highlighted = options.highlighted
            options.set_options(self._options())
            options.highlighted = highlighted

    def on_mount(self) -> None:
        self.validate_soon()

    # ---- validation ----
    @on(ChainForm.Changed)
    def _form_changed(self, event: ChainForm.Changed) -> None:
        self.draft, self.field_errors = event.draft, event.errors
        self.validate_soon()

    def validate_soon(self) -> None:
        """Validate once typing pauses for VALIDATE_SECONDS (and once after mount, not per field)."""
        if self._pending is not None:
            self._pending.stop()
        self._pending = self.set_timer(VALIDATE_SECONDS, self._validate)

    def _validate(self) -> None:
        if self._pending is not None:
            self._pending.stop()
            self._pending = None
        try:
            self.edited = ce.with_draft(self.text, self.draft) if not self.field_errors else self.edited
            self.problems = ce.problems(self.edited, self.config_path, self.app.user_hosts)
        except TOMLKitError as exc:   # the file itself does not parse: nothing can be applied to it
            self.problems = ce.problems(self.text, self.config_path, self.app.user_hosts) or [f"{self.config_path}: {exc}"]
        lines = list(self.field_errors.values()) + [str(p) for p in self.problems]
        text = Text("\n".join(lines), style="red") if lines else Text("✓ valid (same checks as `ban validate`)", style="green")
        self.query_one("#problems", Static).update(text)
        self.query_one("#save-state", Static).update("unsaved changes" if self.dirty else "saved")
        self.post_message(ConfigChanged(self.edited, list(self.problems), self.dirty))

    @property
    def valid(self) -> bool:
        return not self.problems and not self.field_errors

    # ---- choosing an experiment ----
    @on(OptionList.OptionSelected, "#experiments")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.open(self._names()[event.option_index])

    def open(self, name: str) -> None:
        """Show another experiment in the form; with unsaved edits, ask first (save, discard, stay)."""
        if self._pending is not None:   # edits typed just now count
            self._validate()
        if not self.dirty:
            self._open(name)
            return

        def answered(answer: str | None) -> None:
            if answer == "d" or (answer == "s" and self.save()):
                self._open(name)
        self.app.push_screen(Confirm(f"Unsaved edits to {self.draft.name!r}.", SAVE_DISCARD_CANCEL), answered)

    def _open(self, name: str) -> None:
        self.draft = ce.new_draft(self.doc()) if name == NEW else ce.draft_of(self.doc(), name)
        self.field_errors = {}
        self.form.load(self.draft)
        self._validate()

    def action_new(self) -> None:
        self.open(NEW)

    async def action_add_generation(self) -> None:
        if self.form.is_mounted:   # not in the moment before the form is mounted
            await self.form.add_generation()

    # ---- save and launch ----
    def save(self) -> bool:
        """Write the edited text (when valid and the file did not change on disk meanwhile)."""
        if self._pending is not None:
            self._validate()
        if not self.valid:
            n = len(self.problems) + len(self.field_errors)
            self.app.notify(f"not saved: {n} problem{'s' * (n != 1)} to fix first", severity="error")
            return False
        if self._read() != self.text:
            self.app.notify(f"not saved: {self.config_path} changed on disk since it was read; "
                            "reload it from the command palette", severity="error")
            return False
        if self.dirty:
            ce.save(self.edited, self.config_path)
            self.text = self.edited
            self.app.notify(f"saved {self.draft.name!r} to {self.config_path}")
        # the saved file now holds the draft under its name (and its generation tables' order)
        self.draft = ce.draft_of(self.doc(), self.draft.name)
        self.form.draft = self.draft
        self.query_one("#experiments", OptionList).set_options(self._options())
        self._validate()
        return True

    def reload(self) -> None:
        self.text = self._read()
        names = ce.experiment_names(self.doc())
        self.edited = self.text
        self.draft = ce.draft_of(self.doc(), self.draft.source) if self.draft.source in names else (
            ce.draft_of(self.doc(), names[0]) if names else ce.new_draft(self.doc()))
        self.query_one("#experiments", OptionList).set_options(self._options())
        self.form.load(self.draft)
        self._validate()

    def action_save(self) -> None:
        self.save()

    def action_launch(self) -> None:
        if self.save():
            self.app.launch_experiment(self.draft.name)

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#launch")
    def _launch_pressed(self) -> None:
        self.action_launch()
