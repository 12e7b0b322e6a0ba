"""The form that defines or edits one chain: data set, teacher model, the generations (add, remove,
reorder; each with its objective and model), epochs, batch size, lr, ensembles and seeds.

The form holds a `ChainDraft` (ban_tui.config_edit) and posts `ChainForm.Changed` with it after
every edit; the experiments pane turns the draft into config text and validates it.
"""
from __future__ import annotations

from dataclasses import replace

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Select

from ban_tui import config_edit as ce
from engine import catalog
from engine.runs import gen_label

MODELS = SuggestFromList(catalog.model_examples(), case_sensitive=False)


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def _field(label: str, value: str, id: str, **options) -> ComposeResult:
    """A labelled input of the form: the label, then the input `id` holding `value`."""
    yield Label(label, classes="field")
    yield Input(value, id=id, compact=True, **options)


class GenRows(Vertical):
    """One line per generation: the teacher (objective ce) then the students."""

    DEFAULT_CSS = """
    GenRows { height: auto; }
    GenRows > Horizontal { height: 1; margin-bottom: 1; }
    GenRows .gen { width: 9; padding: 0 1; }
    GenRows Select { width: 14; }
    GenRows .teacher-objective { width: 14; padding: 0 2; }
    GenRows Input { width: 1fr; margin: 0 1; }
    GenRows Button { min-width: 3; width: 3; margin-right: 1; }
    """

    def __init__(self, rows: list[ce.GenRow], **kwargs):
        super().__init__(**kwargs)
        self.rows = rows

    def compose(self) -> ComposeResult:
        for i, row in enumerate(self.rows):
            with Horizontal():
                yield Label(gen_label(i), classes="gen")
                if i == 0:
                    yield Label("ce", classes="teacher-objective")
                else:
                    yield Select([(o, o) for o in ce.STUDENT_OBJECTIVES], value=row.objective,
                                 allow_blank=False, id=f"objective-{i}", compact=True)
                yield Input(row.model, placeholder="model", suggester=MODELS, id=f"model-{i}", compact=True)
                if i > 0:
                    yield Button("↑", id=f"up-{i}", tooltip="move earlier", compact=True)
                    yield Button("↓", id=f"down-{i}", tooltip="move later", compact=True)
                    yield Button("✕", id=f"remove-{i}", variant="error", tooltip="remove this generation", compact=True)


class ChainForm(VerticalScroll):
    DEFAULT_CSS = """
    ChainForm { height: 1fr; }
    ChainForm > Horizontal { height: 1; margin-bottom: 1; }
    ChainForm .field { width: 12; padding: 0 1; }
    ChainForm Input, ChainForm Select { width: 1fr; margin-right: 1; }
    ChainForm .section { width: 1fr; padding: 0 1 1 1; text-style: bold; text-wrap: nowrap; text-overflow: ellipsis; }
    ChainForm #add-gen { width: auto; margin-left: 9; }
    """

    class Changed(Message):
        """The draft after an edit; `errors` maps a field to a message when its text does not parse."""

        def __init__(self, form: "ChainForm", draft: ce.ChainDraft, errors: dict[str, str]) -> None:
            super().__init__()
            self.form, self.draft, self.errors = form, draft, errors

    def __init__(self, draft: ce.ChainDraft, **kwargs):
        super().__init__(**kwargs)
        self.draft = draft
        self.errors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        d = self.draft
        with Horizontal():
            yield from _field("name", d.name, "name")
        with Horizontal():
            yield Label("data set", classes="field")
            yield Select([(n, n) for n in catalog.DATASETS], value=d.dataset, allow_blank=False, id="dataset", compact=True)
            yield from _field("data root", d.root, "root", placeholder="(none)")
        with Horizontal():
            yield from _field("epochs", str(d.epochs), "epochs", type="integer")
            yield from _field("batch size", str(d.batch_size), "batch_size", type="integer")
            yield from _field("lr", repr(d.lr), "lr", type="number")
        with Horizontal():
            yield from _field("ensembles", _join(d.ensembles), "ensembles", placeholder="e.g. 2, 3 (Ens*k over BAN-1..k)")
            yield from _field("seeds", _join(d.seeds), "seeds", placeholder="e.g. 0, 1")
        yield Label("generations (teacher model first; students may change architecture)", classes="section")
        yield GenRows(d.rows, id="gen-rows")
        with Horizontal():
            yield Button("+ generation", id="add-gen", tooltip="add a student generation (ctrl+g)", compact=True)

    # ---- loading and structure ----
    def load(self, draft: ce.ChainDraft) -> None:
        """Show another draft (recomposes the whole form)."""
        self.draft, self.errors = draft, {}
        self.refresh(recompose=True)

    async def _rows_changed(self, draft: ce.ChainDraft, focus: str | None = None) -> None:
        self.draft = draft
        rows = self.query_one(GenRows)
        rows.rows = draft.rows
        await rows.recompose()
        if focus:
            found = self.query(f"#{focus}")
            if found:
                found.first().focus()
        self._post()

    async def add_generation(self) -> None:
        draft = ce.add_row(self.draft)
        await self._rows_changed(draft, focus=f"model-{len(draft.rows) - 1}")

    def _post(self) -> None:
        self.post_message(self.Changed(self, self.draft, dict(self.errors)))

    # ---- edits ----
    @on(Button.Pressed, "#add-gen")
    async def _add(self, event: Button.Pressed) -> None:
        event.stop()
        await self.add_generation()

    @on(Button.Pressed, "GenRows Button")
    async def _row_button(self, event: Button.Pressed) -> None:
        event.stop()
        what, i = event.button.id.rsplit("-", 1)
        i = int(i)
        if what == "remove":
            await self._rows_changed(ce.remove_row(self.draft, i), focus=f"remove-{min(i, len(self.draft.rows) - 2)}")
        else:
            step = -1 if what == "up" else 1
            moved = ce.move_row(self.draft, i, step)
            await self._rows_changed(moved, focus=f"{what}-{i + step if moved is not self.draft else i}")

    @on(Select.Changed)
    def _select(self, event: Select.Changed) -> None:
        event.stop()
        sid = event.select.id or ""
        if sid == "dataset":
            self.draft = replace(self.draft, dataset=event.value)
        elif sid.startswith("objective-"):
            i = int(sid.split("-")[1])
            if self.draft.rows[i].objective == event.value:
                return
            rows = list(self.draft.rows)
            rows[i] = replace(rows[i], objective=event.value)
            self.draft = replace(self.draft, rows=rows)
        self._post()

    @on(Input.Changed)
    def _input(self, event: Input.Changed) -> None:
        event.stop()
        iid, value = event.input.id or "", event.value.strip()
        self.errors.pop(iid, None)
        try:
            if iid in ("name", "root"):
                self.draft = replace(self.draft, **{iid: value})
            elif iid in ("epochs", "batch_size"):
                self.draft = replace(self.draft, **{iid: self._number(iid, value, int)})
            elif iid == "lr":
                self.draft = replace(self.draft, lr=self._number(iid, value, float))
            elif iid in ("ensembles", "seeds"):
                self.draft = replace(self.draft, **{iid: ce.parse_int_list(value, iid)})
            elif iid.startswith("model-"):
                i = int(iid.split("-")[1])
                rows = list(self.draft.rows)
                rows[i] = replace(rows[i], model=value)
                self.draft = replace(self.draft, rows=rows)
            else:
                return
        except ce.EditError as exc:
            self.errors[iid] = str(exc)
        self._post()

    @staticmethod
    def _number(key: str, text: str, kind):
        try:
            return kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ce.EditError(f"{key}: expected {what}, found {text!r}") from None
