"""What ctxlab prints, fitted to where it goes.

Text is printed literally: scenario names, summaries, paths and
requirements such as `uvicorn[standard]` may contain brackets that Rich
would otherwise read as markup (`[/b]` even crashes it), so consoles are
made with markup off and styles are given as `Text` styles.

Control characters (an ESC in an app's exception message, a scenario's
summary or a file name) are shown as escapes, `\\x1b`, wherever ctxlab
prints: written as they are, they would recolour, move the cursor or clear
a terminal, or a CI log that renders them.

A stream that cannot show `→ ✓ ✗` (`PYTHONIOENCODING=ascii`, or
`TERM=dumb`) gets ASCII: the stream is switched to ASCII with replacement,
Rich then draws ASCII boxes and trees, and `AsciiStream` spells the few
symbols ctxlab uses.
"""

from __future__ import annotations

import os
import re
import sys
from functools import cache
from typing import TextIO

SPELLED = str.maketrans({"→": "->", "←": "<-", "✓": "ok", "✗": "x", "…": "...", "—": "-"})


# C0 but tab and newline, DEL, C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with its control characters spelled as escapes (`\\x1b`)."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}", text)


def fit_streams() -> None:
    """Make stdout and stderr safe to print anything to, once, at start-up."""
    dumb = os.environ.get("TERM") == "dumb"
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "reconfigure"):
            continue
        if dumb:
            stream.reconfigure(encoding="ascii", errors="replace")
        elif not can_show(stream, "→✓✗"):
            stream.reconfigure(errors="replace")


def can_show(stream: TextIO, text: str) -> bool:
    try:
        text.encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class AsciiStream:
    """A text stream that spells ctxlab's symbols in ASCII on the way out."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.encoding = "ascii"  # Rich reads this to choose ASCII boxes

    def write(self, text: str) -> int:
        return self.stream.write(text.translate(SPELLED))

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@cache
def _console_class():
    from rich.console import Console

    class PipeAwareConsole(Console):
        def render_str(self, text: str, **options):
            # A plain string in a table cell or a tree label, made Text here.
            return super().render_str(visible(text), **options)

        def _render_buffer(self, buffer):
            # Here the text is apart from the styles' own escape codes.  What
            # did not come through render.Text or render_str() (a title
            # Rich made Text itself) is escaped here, after layout.  One
            # search of the whole text first: a run prints thousands of
            # segments, almost never with a control character.
            buffer = list(buffer)
            if _CONTROL.search("".join(segment.text for segment in buffer if not segment.control)):
                buffer = [s if s.control else s._replace(text=visible(s.text)) for s in buffer]
            return super()._render_buffer(buffer)

        def on_broken_pipe(self) -> None:
            # Rich exits 1 here, which reads as drift; main() ends quietly.
            self.quiet = True
            raise reader_gone()

    return PipeAwareConsole


def reader_gone() -> BrokenPipeError:
    """The error to raise when stdout's reader went away.  It carries no
    errno on purpose: typer turns an EPIPE OSError into exit 1, which reads
    as drift, while main() ends this one quietly with 141."""
    return BrokenPipeError()


def stream(stderr: bool = False) -> TextIO:
    """stdout (or stderr), spelling ctxlab's symbols in ASCII where needed."""
    chosen = sys.stderr if stderr else sys.stdout
    return chosen if can_show(chosen, "→✓✗") else AsciiStream(chosen)


# Narrower than this (COLUMNS=1, a width set by mistake), Rich would wrap
# every word, down to a letter a line: the terminal's own wrapping reads better.
NARROWEST = 40
# Wider than any screen: Rich pads panels and source to the width, and
# COLUMNS=1000000 made `explain` print 144 MB.
WIDEST = 500


def console(stderr: bool = False, file: TextIO | None = None):
    """A Rich console on stdout (or stderr, or `file`) that prints text literally."""
    made = _console_class()(file=file or stream(stderr), highlight=False, markup=False)
    made.width = min(max(made.width, NARROWEST), WIDEST)
    return made
