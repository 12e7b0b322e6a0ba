"""A DataTable filled from ban_tui.tables rows (so the CLI and the TUI show numbers the same way),
updated in place: only the cells that changed are redrawn and the cursor stays where it was."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from ban_tui.tables import STATUS_MARK, STATUS_STYLE



def status_text(status: str) -> Text:
    word = status.split(" ")[0]   # "queued #2"
    return Text(f"{STATUS_MARK.get(word, ' ')} {status}", style=STATUS_STYLE.get(word, ""))


class RowsTable(DataTable):
    """`columns` as in ban_tui.tables ([(key, heading)]); `show(rows, keys)` with one dict per row."""

    DEFAULT_CSS = "RowsTable { height: auto; max-height: 100%; }"

    def __init__(self, columns: list[tuple[str, str]], **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.spec = columns
        for key, heading in columns:   # here, so rows can be shown before the table is mounted
            self.add_column(heading, key=key)

    def row_keys(self) -> list[str]:
        return [k.value for k in self.rows]

    def show(self, rows: list[dict], keys: list[str] | None = None, columns: list | None = None) -> None:
        """The rows (keys: their row keys); `columns`, where given, replace the table's columns
        when they differ (a column no row fills can be left out)."""
        if columns is not None and columns != self.spec:
            self.clear(columns=True)
            self.spec = columns
            for key, heading in columns:
                self.add_column(heading, key=key)
        keys = keys if keys is not None else [str(i) for i in range(len(rows))]
        cells = [[self.cell(key, row.get(key, "")) for key, _ in self.spec] for row in rows]
        if self.row_keys() == keys:
            for key, values in zip(keys, cells):
                for (col, _), value in zip(self.spec, values):
                    if self.get_cell(key, col) != value:
                        self.update_cell(key, col, value)
            return
        cursor = self.row_keys()[self.cursor_row] if self.row_count and self.cursor_row < self.row_count else None
        self.clear()
        for key, values in zip(keys, cells):
            self.add_row(*values, key=key)
        if cursor in keys:
            self.move_cursor(row=keys.index(cursor))

    @staticmethod
    def cell(key: str, value):
        return status_text(value) if key == "status" else value

    @property
    def cursor_key(self) -> str | None:
        keys = self.row_keys()
        return keys[self.cursor_row] if keys and 0 <= self.cursor_row < len(keys) else None
