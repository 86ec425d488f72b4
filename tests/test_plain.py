"""Piped output (ctxlab.plain) shows what Rich shows: the same words in the
same order, only laid out without measuring, wrapping or styles."""

import io
import re

from conftest import run_named
from rich.console import Console

from ctxlab import render
from ctxlab.plain import PlainConsole
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
