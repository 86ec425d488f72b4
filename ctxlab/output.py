"""How a command shows its result: tables for people, or JSON for programs.

Each command asks its emitter to show one kind of result; the format the
user chose (`--json` or not) decides which emitter that is, once.  Results
go to stdout, whatever the format; notes and errors go to stderr.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from rich.console import Console

    from ctxlab.diagnose import Diagnosis
    from ctxlab.report import Change, Report, ScenarioReport
    from ctxlab.scenario import Entry
    from ctxlab.trace import Change as TraceChange


def console(stderr: bool = False) -> Console:
    """A Rich console for stdout (results) or stderr (notes), printing text
    literally and in ASCII where the stream needs it (see ctxlab.terminal)."""
    from ctxlab import terminal

    return terminal.console(stderr)


class OutputFormat(str, Enum):
    """The output formats; `emitter()` builds the one that writes it."""

    TABLE = "table"
    JSON = "json"

    @classmethod
    def chosen(cls, as_json: bool) -> OutputFormat:
        """The format a command's `--json` flag asks for."""
        return cls.JSON if as_json else cls.TABLE

    def emitter(self) -> Emitter:
        """A new emitter writing this format to stdout."""
        return JsonEmitter() if self is OutputFormat.JSON else TableEmitter()


class Emitter:
    """What every format can show.  Progress is for people only: by default
    showing a finished scenario does nothing."""

    def catalog(self, entries: Iterable[Entry]) -> None:
        """`ctxlab list`: the scenarios."""
        raise NotImplementedError

    def progress(self, entry: Entry, outcomes: list[ScenarioReport]) -> None:
        """One scenario has run, on each server asked for."""

    def report(self, results: Report, seconds: float) -> None:
        """Every scenario has run (or Ctrl-C stopped the run)."""
        raise NotImplementedError

    def changes(self, found: list[Change], before: dict[str, Any], after: dict[str, Any]) -> None:
        """What changed against a snapshot, and both sides' environments."""
        raise NotImplementedError

    def matrix(self, grid: dict[str, Any]) -> None:
        """`ctxlab matrix`: the scenario x environment grid."""
        raise NotImplementedError

    def diagnosis(self, result: Diagnosis) -> None:
        """`ctxlab probe`: the layers of the user's app and the verdict."""
        raise NotImplementedError

    def trace(self, document: dict[str, Any], view: list[Any], changes: list[TraceChange] | None) -> None:
        """A trace of the user's app (its JSON document, and its view from
        render.trace_view); `changes` against a baseline, if given."""
        raise NotImplementedError

    def trace_changes(self, app: str, changes: list[TraceChange]) -> None:
        """What changed since a saved trace of `app`."""
        raise NotImplementedError


class JsonEmitter(Emitter):
    """One JSON document on stdout, in the schemas the README documents."""

    def _dump(self, document: Any) -> None:
        import sys

        from ctxlab.terminal import reader_gone

        try:
            print(json.dumps(document, indent=2))
            sys.stdout.flush()  # here, not at exit, where a closed pipe could not be told apart
        except BrokenPipeError:
            raise reader_gone() from None

    def catalog(self, entries: Iterable[Entry]) -> None:
        self._dump(
            [{"name": e.name, "tags": list(e.tags), "summary": e.summary, "servers": list(e.servers)} for e in entries]
        )

    def report(self, results: Report, seconds: float) -> None:
        self._dump(results.to_json())

    def changes(self, found: list[Change], before: dict[str, Any], after: dict[str, Any]) -> None:
        self._dump({"schema_version": 1, "before": before, "after": after, "changes": [vars(c) for c in found]})

    def matrix(self, grid: dict[str, Any]) -> None:
        self._dump(grid)

    def diagnosis(self, result: Diagnosis) -> None:
        self._dump(result.to_json())

    def trace(self, document: dict[str, Any], view: list[Any], changes: list[TraceChange] | None) -> None:
        if changes is not None:
            document["changes"] = [vars(c) for c in changes]
        self._dump(document)

    def trace_changes(self, app: str, changes: list[TraceChange]) -> None:
        self._dump({"schema_version": 1, "app": app, "changes": [vars(c) for c in changes]})


class TableEmitter(Emitter):
    """Tables on stdout, laid out by ctxlab.plain: styled on a terminal,
    plain when stdout is not one."""

    def __init__(self) -> None:
        import sys

        from ctxlab import plain

        self.plain = plain.wanted(sys.stdout)
        self.console = plain.PlainConsole() if self.plain else plain.TerminalConsole(console())

    @property
    def render(self):
        from ctxlab import render  # Rich: imported only when something is drawn with it

        return render

    def catalog(self, entries: Iterable[Entry]) -> None:
        if self.plain:  # the catalog alone needs no Rich at all
            rows = [[entry.name, ", ".join(entry.tags), entry.summary] for entry in entries]
            self.console.columns(["name", "tags", "summary"], rows)
        else:
            self.render.catalog(entries, self.console)

    def progress(self, entry: Entry, outcomes: list[ScenarioReport]) -> None:
        self.render.outcomes(entry, outcomes, self.console)

    def report(self, results: Report, seconds: float) -> None:
        self.console.print(self.render.summary_line(results, seconds))

    def changes(self, found: list[Change], before: dict[str, Any], after: dict[str, Any]) -> None:
        self.render.changes(found, before, after, self.console)

    def matrix(self, grid: dict[str, Any]) -> None:
        self.render.matrix(grid, self.console)

    def diagnosis(self, result: Diagnosis) -> None:
        self.render.diagnosis(result, self.console)

    def trace(self, document: dict[str, Any], view: list[Any], changes: list[TraceChange] | None) -> None:
        for renderable in view:
            self.console.print(renderable)
        if changes is not None:
            self.render.trace_changes(changes, self.console)

    def trace_changes(self, app: str, changes: list[TraceChange]) -> None:
        self.render.trace_changes(changes, self.console)
