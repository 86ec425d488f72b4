"""Drawing the views' tables without Rich's layout.

The views in ctxlab.render build Rich tables and texts.  Rich draws a
table by measuring every cell, wrapping it to the window and styling it
(about 2 ms per scenario of `ctxlab run --all`, most of its printing time),
while ctxlab's tables are small grids of short cells.  So they are laid out
here directly: the same rows, columns and cells, each column as wide as its
widest line, nothing wrapped or cut.
- `PlainConsole`, for output that is not a terminal (a pipe, a file, a CI
  log): no colour, no window to fit.
- `TerminalConsole`, for a terminal: the same layout with the cells'
  styles, written through Rich (which knows the terminal's colours); a
  table wider than the window has its widest columns narrowed and their
  lines folded (by Rich's own wrapping of a text) to fit; a text that would
  wrap is left to Rich.
Anything else (a tree, a panel, source code, markup) is handed to Rich
unchanged.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

if TYPE_CHECKING:
    from rich.table import Table

GAP = "  "  # between columns, as Rich leaves between unboxed columns
NARROWEST = 6  # a column folded to fit a terminal is no narrower (Rich draws tables that need more)


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
        Table, Text, _ = _rich_types()  # noqa: N806 - the classes themselves
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
        from ctxlab.terminal import visible

        try:
            self.file.write(visible(text))
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
        widths = _widths(cells, len)
        lines = []
        for pieces in _arranged(cells, widths, right, rule=bool(header and rule)):
            if pieces is None:
                lines.append(self.rule * _span(widths))
            else:
                lines.append(
                    GAP.join(_aligned(piece or "", width, justify) for piece, width, justify in pieces).rstrip()
                )
        return "\n".join(lines)


class TerminalConsole(PlainConsole):
    """What ctxlab.render uses of a Rich Console, on a terminal: tables laid
    out here with their cells' styles, and texts that fit on a line, are
    turned into Rich segments and written by `rich` (one print each);
    everything else is printed by `rich` itself."""

    def __init__(self, rich: Any) -> None:
        super().__init__(rich.file)
        self._rich = rich

    @property
    def width(self) -> int:
        return self._rich.width

    def print(self, *objects: Any, **options: Any) -> None:
        """Print like Console.print."""
        segments = self._segments(objects[0], self.width) if len(objects) == 1 and not options else None
        if segments is None:
            self._rich.print(*objects, **options)
        else:
            from rich.segment import Segments

            self._rich.print(Segments(segments), soft_wrap=True)

    def _segments(self, item: Any, width: int) -> list | None:
        """`item` drawn as Rich segments, or None where Rich must draw it to
        fit in `width` (the window's, read once: Rich reads the environment
        and asks the terminal each time)."""
        Table, Text, _ = _rich_types()  # noqa: N806 - the classes themselves
        if isinstance(item, Text):
            fits = item.cell_len <= width and not any(c in item.plain for c in "\n\t")
            return self._rendered(item, item.end) if fits else None
        if isinstance(item, Table) and not item.title:
            return self.table_segments(item, width)
        return None

    def table_segments(self, table: Table, width: int) -> list | None:
        """A Rich table's header and rows in columns, as segments.  A table
        wider than `width` has its widest wrappable columns narrowed and
        their lines folded as Rich folds them; None if even that cannot make
        it fit (Rich then draws it)."""
        from rich.segment import Segment

        Text = _rich_types()[2]  # noqa: N806
        columns = table.columns
        header = [Text(_plain(c.header), style=table.header_style or "") for c in columns] if table.show_header else []
        rows = [[column._cells[row] for column in columns] for row in range(table.row_count)]
        cells = [[_lines(cell) for cell in row] for row in ([header] if header else []) + rows]
        widths = _widths(cells, lambda text: text.cell_len)
        if _span(widths) > width:
            cells = self._folded(cells, widths, [not column.no_wrap for column in columns], width)
            if cells is None:
                return None
            widths = _widths(cells, lambda text: text.cell_len)
        right = [column.justify == "right" for column in columns]
        segments = []
        for pieces in _arranged(cells, widths, right, rule=bool(header) and table.box is not None):
            if pieces is None:
                segments.append(Segment(self.rule * _span(widths)))
            placed = [(piece.cell_len if piece is not None else 0, piece, *column) for piece, *column in pieces or ()]
            # Nothing after the last piece with text, as piped lines are stripped.
            last = max((number for number, (length, *_) in enumerate(placed) if length), default=-1)
            for number, (length, piece, column_width, justify_right) in enumerate(placed[: last + 1]):
                if number:
                    segments.append(Segment(GAP))
                if justify_right:
                    segments.append(Segment(" " * (column_width - length)))
                if piece is not None:
                    segments.extend(self._rendered(piece))
                if not justify_right and number < last:
                    segments.append(Segment(" " * (column_width - length)))
            segments.append(Segment.line())
        return segments

    def _folded(self, cells: list, widths: list[int], wrappable: list[bool], width: int) -> list | None:
        """The cells with the widest wrappable columns narrowed, one column
        a character at a time, until the table fits `width` (none narrower
        than NARROWEST), each line longer than its column folded as Rich
        folds it (at spaces, or inside a word longer than the column); None
        if the columns that may wrap cannot be narrowed enough."""
        narrowed = list(widths)
        for _ in range(_span(widths) - width):
            candidates = [i for i, w in enumerate(narrowed) if wrappable[i] and w > NARROWEST]
            if not candidates:
                return None
            narrowed[max(candidates, key=narrowed.__getitem__)] -= 1
        folded = []
        for row in cells:
            folded.append([])
            for lines, most in zip(row, narrowed):
                folded[-1].append(
                    [part for line in lines
                     for part in (line.wrap(self._rich, most, overflow="fold") if line.cell_len > most else [line])]
                )  # fmt: skip
        return folded

    def _rendered(self, text: Any, end: str = "") -> list:
        """`text`, then `end`, as Rich segments.  Text.render leaves out the
        text's own style when it has no spans (Rich's own drawing joins the
        text into lines first, which turns that style into a span)."""
        from rich.segment import Segment

        segments = list(text.render(self._rich))
        if text.style and not text.spans:
            segments = list(Segment.apply_style(segments, self._rich.get_style(text.style)))
        return [*segments, Segment(end)] if end else segments


@cache
def _rich_types() -> tuple[type, type, type]:
    """Rich's Table and Text, and the Text ctxlab makes (render.Text),
    imported once, when first drawn (an import statement costs about a
    microsecond each time, and a run prints a few lines per scenario)."""
    from rich.table import Table
    from rich.text import Text

    from ctxlab.render import Text as VisibleText

    return Table, Text, VisibleText


def _plain(cell: Any) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)


def _lines(cell: Any) -> list:
    """A cell as a list of Rich Texts, one per line."""
    _, Text, VisibleText = _rich_types()  # noqa: N806
    text = cell if isinstance(cell, Text) else VisibleText(str(cell))
    return text.split("\n", allow_blank=True) if "\n" in text.plain else [text]


def _widths(cells: list[list[list[Any]]], width_of: Callable[[Any], int]) -> list[int]:
    """Each column's width: its widest line."""
    return [max(width_of(line) for row in cells for line in row[i]) for i in range(len(cells[0]))] if cells else []


def _span(widths: list[int]) -> int:
    """How wide columns of these widths are, with the gaps between them."""
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _arranged(
    cells: list[list[list[Any]]], widths: list[int], right: list[bool] | None, rule: bool
) -> Iterator[list[tuple[Any, int, bool]] | None]:
    """The lines of a grid of cells (each a list of lines), the first row
    its header: each line as (its piece of each cell, or None where that cell
    has no more lines; the column's width; right-justified?), and None for
    the rule under the header if `rule`."""
    right = right or [False] * len(widths)
    for number, row in enumerate(cells):
        for index in range(max(len(cell) for cell in row)):
            yield [(cell[index] if index < len(cell) else None, width, r) for cell, width, r in zip(row, widths, right)]
        if number == 0 and rule:
            yield None


def _aligned(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)
