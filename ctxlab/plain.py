"""Drawing for output that is not a terminal (a pipe, a file, a CI log).

The views in ctxlab.render build Rich tables and texts; a terminal gets
them drawn by Rich, which measures every cell, wraps to the window and
styles.  Piped output has no colour and no window to fit, and Rich's layout
was most of the time `ctxlab run --all` spent printing, so the same tables
are laid out here directly: the same rows, columns and cells, each column
as wide as its widest line, nothing wrapped or cut.  Anything else (a tree,
a panel, source code, markup) is handed to Rich unchanged.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.table import Table

GAP = "  "  # between columns, as Rich leaves between unboxed columns


def wanted(stream: TextIO) -> bool:
    """Is `stream` no terminal, with no colour asked for (FORCE_COLOR)?"""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


class PlainConsole:
    """What ctxlab.render uses of a Rich Console, drawing tables and texts
    in plain text and everything else through a Rich console on demand."""

    def __init__(self, file: TextIO | None = None) -> None:
        from ctxlab import terminal

        self.file = file or terminal.stream()
        self._rich: Any = None
        rule = "─"
        try:
            rule.encode(getattr(self.file, "encoding", None) or "ascii")
        except (UnicodeEncodeError, LookupError):
            rule = "-"
        self.rule = rule

    @property
    def width(self) -> int:
        return sys.maxsize  # nothing is wrapped

    def print(self, *objects: Any, **options: Any) -> None:
        """Print like Console.print: tables and texts here, the rest by Rich."""
        Table, Text = _rich_types()  # noqa: N806 - the classes themselves
        drawn = []
        for item in objects:
            if isinstance(item, Table):
                drawn.append(self.table(item))
            elif isinstance(item, Text):
                drawn.append(item.plain)
            elif isinstance(item, str) and "[" not in item:  # no markup to read
                drawn.append(item)
            else:
                self._flush(drawn)
                drawn = []
                self.rich().print(item, **options)
        if not objects:  # print() alone: an empty line
            self._write("\n")
        self._flush(drawn)

    def _flush(self, drawn: list[str]) -> None:
        if drawn:
            self._write(" ".join(drawn) + "\n")

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
            # Now, as a terminal would show it: `| tee` sees each scenario
            # as it finishes, and a Ctrl-C loses nothing already printed.
            self.file.flush()
        except BrokenPipeError:
            from ctxlab import terminal  # here, not on every write: a run writes a few lines per scenario

            raise terminal.reader_gone() from None

    def rich(self) -> Any:
        """The Rich console for what is not drawn here."""
        if self._rich is None:
            from ctxlab import terminal

            self._rich = terminal.console(file=self.file)
        return self._rich

    def table(self, table: Table) -> str:
        """A Rich table's title, header and rows, in columns."""
        columns = table.columns
        rows = [[_plain(column._cells[row]) for column in columns] for row in range(table.row_count)]
        text = self.layout(
            [_plain(column.header) for column in columns] if table.show_header else None,
            rows,
            rule=table.box is not None,
            right=[column.justify == "right" for column in columns],
        )
        return f"{_plain(table.title)}\n{text}" if table.title else text

    def columns(self, header: list[str], rows: list[list[str]]) -> None:
        """Print rows of plain strings under a header, in columns (no Rich
        needed: `ctxlab list | grep` imports none of it)."""
        self._write(self.layout(header, rows) + "\n")

    def layout(
        self, header: list[str] | None, rows: list[list[str]], rule: bool = False, right: list[bool] | None = None
    ) -> str:
        """Cells (which may hold several lines) in columns as wide as their
        widest line; `rule` draws a line under the header."""
        cells = [[cell.split("\n") for cell in row] for row in ([header] if header else []) + rows]
        count = len(cells[0]) if cells else 0
        widths = [max(len(line) for row in cells for line in row[i]) for i in range(count)]
        right = right or [False] * count
        lines = []
        for number, row in enumerate(cells):
            for index in range(max(len(cell) for cell in row)):
                parts = []
                for cell, width, justify_right in zip(row, widths, right):
                    text = cell[index] if index < len(cell) else ""
                    parts.append(text.rjust(width) if justify_right else text.ljust(width))
                lines.append(GAP.join(parts).rstrip())
            if number == 0 and header and rule:
                lines.append(self.rule * (sum(widths) + len(GAP) * (count - 1)))
        return "\n".join(lines)


@cache
def _rich_types() -> tuple[type, type]:
    """Rich's Table and Text, imported once, when first drawn (an import
    statement costs about a microsecond each time, and a run prints a few
    lines per scenario)."""
    from rich.table import Table
    from rich.text import Text

    return Table, Text


def _plain(cell: Any) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)
