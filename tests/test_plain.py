"""Piped output (ctxlab.plain) shows what Rich shows: the same words in the
same order, only laid out without measuring, wrapping or styles."""

import io
import re

import pytest
from conftest import run_named
from rich.console import Console

from ctxlab import render
from ctxlab.plain import PlainConsole, TerminalConsole
from ctxlab.scenario import catalog


def words(text):
    return re.sub(r"[─━│┃]|-{3,}", " ", text).split()  # rules and borders are no words


def drawn_both_ways(draw):
    rich_out, plain_out = io.StringIO(), io.StringIO()
    draw(Console(file=rich_out, width=400, no_color=True, highlight=False))
    draw(PlainConsole(plain_out))
    return rich_out.getvalue(), plain_out.getvalue()


def test_a_run_shows_the_same_words_piped():
    entry = catalog()["bad-then-shiny"]
    result = run_named("bad-then-shiny")
    rich_text, plain_text = drawn_both_ways(lambda console: render.outcomes(entry, [result], console))
    assert words(plain_text) == words(rich_text)
    assert 'naive: {"random_int": 42}' in plain_text and "onion: ShinyMiddleware → BadMiddleware → app" in plain_text


def test_two_servers_side_by_side_show_the_same_words_piped():
    entry = catalog()["lifespan-var"]
    results = [run_named("lifespan-var", server) for server in ("asgi", "uvicorn")]
    rich_text, plain_text = drawn_both_ways(lambda console: render.outcomes(entry, results, console))
    assert words(plain_text) == words(rich_text)


def test_multi_line_cells_stay_in_their_rows():
    out = io.StringIO()
    table = render._table("a", "b")
    table.add_row("one\ntwo", "x")
    table.add_row("three", "y")
    PlainConsole(out).print(table)
    # A StringIO names no encoding, so the rule is drawn in ASCII.
    assert out.getvalue().splitlines() == ["a      b", "--------", "one    x", "two", "three  y"]


def test_columns_are_as_wide_as_their_widest_cell():
    """What `ctxlab list` prints, with no Rich at all."""
    out = io.StringIO()
    PlainConsole(out).columns(["name", "tags"], [["bad-then-shiny", "middleware"], ["x", ""]])
    assert out.getvalue() == "name            tags\nbad-then-shiny  middleware\nx\n"
    assert PlainConsole(io.StringIO()).layout(None, []) == ""
    assert PlainConsole(io.StringIO()).layout(["name", "tags"], []) == "name  tags"  # nothing matched


def test_what_is_not_a_table_or_text_is_drawn_by_rich():
    """A string with brackets (and any other renderable) goes to a Rich
    console on the same stream, drawn as Rich draws it for a file, with
    markup off: ctxlab prints names and paths literally."""
    plain_out, rich_out = io.StringIO(), io.StringIO()
    PlainConsole(plain_out).print("[b]bold[/b] move")
    Console(file=rich_out, no_color=True, highlight=False, markup=False).print("[b]bold[/b] move")
    assert plain_out.getvalue() == rich_out.getvalue() == "[b]bold[/b] move\n"


def test_plain_drawing_is_for_pipes_and_files_unless_colour_is_forced(monkeypatch):
    from ctxlab.plain import wanted

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    closed = io.StringIO()
    closed.close()  # isatty() now raises ValueError
    assert (wanted(io.StringIO()), wanted(closed), wanted(object())) == (True, False, False)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert not wanted(io.StringIO())
    monkeypatch.delenv("TTY_COMPATIBLE")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not wanted(io.StringIO())


def test_the_catalog_shows_the_same_words_piped():
    rich_text, plain_text = drawn_both_ways(lambda console: render.catalog(catalog().values(), console))
    assert words(plain_text) == words(rich_text) and "bad-then-shiny" in plain_text


def test_a_tall_cell_beside_short_ones():
    assert PlainConsole(io.StringIO()).layout(["a", "b"], [["1\n2\n3", "x"]]) == "a  b\n1  x\n2\n3"


def test_a_rich_renderable_is_drawn_by_rich():
    from rich.tree import Tree

    tree = Tree("root")
    tree.add("leaf")
    rich_text, plain_text = drawn_both_ways(lambda console: console.print(tree))
    assert plain_text == rich_text and "leaf" in plain_text


def test_a_reader_that_went_away_is_the_quiet_broken_pipe():
    """`ctxlab list | head -1`: the write fails; main() ends quietly on a
    BrokenPipeError without an errno (an errno would make typer exit 1)."""

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError) as caught:
        PlainConsole(Gone()).columns(["name"], [["x"]])
    assert caught.value.errno is None


# -- on a terminal ---------------------------------------------------------------------------------
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def styled_words(text):
    """Each word and the terminal style (SGR codes) it is drawn in."""
    found, style = [], ""
    for number, piece in enumerate(SGR.split(text)):
        if number % 2:
            style = "" if piece in ("", "0") else piece
        else:
            found += [(word, style) for word in words(piece)]
    return found


def terminal(width, file=None):
    """A colour terminal, whatever NO_COLOR or TERM say where the tests run."""
    return Console(file=file or io.StringIO(), width=width, height=25, force_terminal=True, color_system="standard",
                   no_color=False, highlight=False, markup=False)  # fmt: skip


def drawn_on_terminals(draw, width=400):
    """What Rich draws and what TerminalConsole draws, on equal terminals."""
    rich, ours = terminal(width), terminal(width)
    draw(rich)
    draw(TerminalConsole(ours))
    return rich.file.getvalue(), ours.file.getvalue()


@pytest.mark.parametrize("name", ["bad-then-shiny", "executor-no-copy", "dependency-audit"])
def test_a_run_on_a_terminal_shows_the_words_in_the_styles_rich_gives_them(name):
    entry = catalog()[name]
    result = run_named(name)
    rich_text, our_text = drawn_on_terminals(lambda console: render.outcomes(entry, [result], console))
    assert styled_words(our_text) == styled_words(rich_text)
    assert ("✓", "32") in styled_words(our_text)  # a match, green as Rich draws it


def test_a_drifted_row_is_red_on_a_terminal():
    table = render.observation_table([])
    table.add_row("1", "probe", render.Text("✗ null", style="bold red"), "1", "C1")
    rich_text, our_text = drawn_on_terminals(lambda console: console.print(table))
    assert ("✗", "1;31") in styled_words(our_text) and styled_words(our_text) == styled_words(rich_text)


def test_a_terminal_table_is_laid_out_as_piped_output_is():
    """Right- and left-justified columns, a cell with blank lines, and a
    window exactly as wide as the table: the piped layout, in colour."""
    table = render._table("n", "name", "note")
    table.columns[0].justify = "right"
    table.add_row("7", render.Text("seven", style="cyan"), "odd")
    table.add_row("10", "ten\n\nand more\n", "even")
    piped, on_terminal = io.StringIO(), terminal(len("10  and more  even"))
    PlainConsole(piped).print(table)
    TerminalConsole(on_terminal).print(table)
    assert SGR.sub("", on_terminal.file.getvalue()) == piped.getvalue()
    assert piped.getvalue().splitlines() == [
        " n  name      note",
        "-" * 18,
        " 7  seven     odd",
        "10  ten       even",
        "",
        "    and more",
        "",
    ]
    assert "\x1b[36mseven\x1b[0m" in on_terminal.file.getvalue()


def test_the_catalog_on_a_wide_terminal_is_the_piped_one_in_colour():
    """An unboxed table (the catalog) gets no rule on a terminal either."""
    entries = catalog().values()
    piped, on_terminal = io.StringIO(), terminal(400)
    render.catalog(entries, PlainConsole(piped))
    render.catalog(entries, TerminalConsole(on_terminal))
    assert SGR.sub("", on_terminal.file.getvalue()) == piped.getvalue()


def test_what_ctxlab_does_not_lay_out_is_drawn_by_rich_on_a_terminal():
    """A tree, a panel with or without a title, a titled table, a text with
    a tab (Rich expands it): exactly as Rich draws them."""
    from rich.panel import Panel
    from rich.tree import Tree

    tree = Tree("root")
    tree.add("leaf")
    titled = render._table("a", title="expectations")
    titled.add_row("1")
    for item in (tree, Panel("why"), Panel("fix", title="the fix"), titled, render.Text("a\tb", style="dim")):
        rich_text, our_text = drawn_on_terminals(lambda console: console.print(item), 80)  # noqa: B023
        assert our_text == rich_text


@pytest.mark.parametrize("width", [35, 45, 51])  # at 35 two columns are at their least width, 6
def test_a_table_wider_than_the_window_is_folded_to_fit(width):
    """The widest columns are narrowed and their lines folded: every line
    fits the window, nothing is lost, and a no-wrap column stays whole."""
    table = render._table("probe / var", "observed")
    table.add_column("where", no_wrap=True)
    table.add_row("endpoint.after", '{"random_int": 424242424242424242}', "T2←T1 C2 MainThread")
    piped, on_terminal = io.StringIO(), terminal(width)
    PlainConsole(piped).print(table)
    TerminalConsole(on_terminal).print(table)
    shown = SGR.sub("", on_terminal.file.getvalue())
    assert max(map(len, shown.splitlines())) <= width < len(piped.getvalue().splitlines()[0])

    def characters(text):
        return sorted(re.sub(r"[\s─-]", "", text))

    assert characters(shown) == characters(piped.getvalue())
    lines = shown.splitlines()
    rule = next(number for number, line in enumerate(lines) if set(line) <= set("-─") and line)
    assert lines[rule + 1].endswith("  T2←T1 C2 MainThread")  # whole, on the row's first line
    if width == 51:  # the widest column narrowed first: it alone is folded
        assert lines[rule + 1].startswith("endpoint.after  ") and "424242424242424242" not in shown


def test_what_cannot_fit_even_folded_is_drawn_by_rich():
    """Too narrow a window for the columns' least widths, or a text longer
    than the window: exactly what Rich draws."""
    table = render._table("probe / var", "observed")
    table.add_row("endpoint.after", '{"random_int": 424242424242424242}')
    line = render.Text("a summary longer than the terminal is wide, " * 2, style="dim")
    # A column already narrower than the least width, or at it, is not narrowed.
    narrow, least = render._table("n"), render._table("number")
    for small in (narrow, least):
        small.add_column("where", no_wrap=True)
        small.add_row(small.columns[0].header, "T12←T11 C12 worker-1")
    for item, width in ((table, 10), (line, 45), (narrow, 22), (least, 27)):
        rich_text, our_text = drawn_on_terminals(lambda console: console.print(item), width)  # noqa: B023
        assert our_text == rich_text


def on_a_terminal(*args, columns):
    """`ctxlab ARGS` with stdout a terminal `columns` wide: (exit code, what it showed)."""
    import os
    import pty
    import subprocess
    import sys

    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None), env.pop("FORCE_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "ctxlab", *args], stdout=secondary, env=env)
    os.close(secondary)
    shown = b""
    try:
        while chunk := os.read(primary, 65536):
            shown += chunk
    except OSError:  # the terminal closed with the command
        pass
    os.close(primary)
    return process.wait(timeout=120), shown.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("columns", [200, 50])
def test_ctxlab_on_a_terminal_shows_what_it_pipes_in_colour(columns):
    """The command itself on a terminal: the words it pipes, in colour,
    every line within the window (at 50 columns Rich folds the tables, so
    words of one row share lines: only the lines' width is compared)."""
    from conftest import ctxlab

    code, shown = on_a_terminal("run", "bad-then-shiny", columns=columns)
    _, piped, _ = ctxlab("run", "bad-then-shiny", env={"TERM": "xterm-256color"})  # as on the terminal
    assert code == 0 and "\x1b[32m" in shown  # a match, in green
    plain = SGR.sub("", shown)
    assert max(map(len, plain.splitlines())) <= columns
    if columns == 200:

        def timeless(text):
            return words(re.sub(r"\d+ ms|in [\d.]+s", "", text))  # durations differ from run to run

        assert timeless(plain) == timeless(piped)


def test_control_characters_in_a_cell_rich_draws_are_escaped_before_layout():
    """A string cell of a table Rich draws: its BEL (which Rich would drop)
    and ESC are escapes, measured as printed, so every border stays in line."""
    from rich.table import Table

    from ctxlab.terminal import console

    out = io.StringIO()
    table = Table()
    table.add_column("a")
    table.add_row("x\x07y\x1bz")
    table.add_row("abcdefgh")
    console(file=out).print(table)
    lines = out.getvalue().splitlines()
    assert "│ x\\x07y\\x1bz │" in lines and len({len(line) for line in lines}) == 1, lines
