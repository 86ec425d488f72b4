"""What `explain` shows: the onion, who created which task in which context, the story."""

import io
import json
import re
from dataclasses import replace

import pytest
from conftest import ctxlab, ctxlab_json, run_named
from rich.console import Console

from ctxlab import matrix, render
from ctxlab.config import RunConfig
from ctxlab.engine import run_entry
from ctxlab.scenario import catalog, load


def explained(name):
    entry = catalog()[name]
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    render.explain(load(entry), run_entry(entry, RunConfig()), entry.path.read_text(encoding="utf-8"), console)
    return console.export_text(), load(entry)


def test_explain_tells_the_whole_story():
    text, scenario = explained("bad-then-shiny")
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0] == f"bad-then-shiny  {scenario.summary}"
    assert "onion: ShinyMiddleware → BadMiddleware → app" in lines
    # BaseHTTPMiddleware runs the endpoint in a child task, in a copy of the
    # request task's context; the middleware read after it, in the request task.
    start = lines.index("request 1")
    assert lines[start + 1 : start + 6] == [
        "└── task T1, context C1",
        "    ├── task T2 (created by T1), context C2 (copied from C1)",
        '    │   └── ✓ endpoint: context = {"random_int": 42}',
        "    ├── ✓ bad.after: context = null",
        "    └── ✓ shiny.after: context = null",
    ]
    rows = [line.split() for line in lines[lines.index("expectations") :]]
    assert ["bad.after", "null", '{"random_int":', "42}"] in rows  # expected, and what a naive reading expects
    flat = " ".join(line.strip("│ ") for line in lines)
    assert "─ why ─" in text and " ".join(scenario.why.split()[:12]) in flat
    assert "─ the fix ─" in text and " ".join(scenario.fix.split()[:12]) in flat
    # In its panel, not only in the source printed below it.
    header = next(n for n, line in enumerate(lines) if "─ the fix ─" in line)
    bottom = next(n for n in range(header, len(lines)) if lines[n].startswith("╰"))
    assert " ".join(line.strip("│ ") for line in lines[header + 1 : bottom]).split() == scenario.fix.split()
    assert f"source: {scenario.source}" in lines
    assert '"""BaseHTTPMiddleware and pure ASGI middleware: the order of add_middleware.' in lines


def test_a_thread_hangs_under_the_task_whose_context_it_copied():
    text, _ = explained("executor-copy-context")
    # run_in_executor(None, copy_context().run, job): the job runs on a
    # worker thread, in a copy of the request's context.
    assert "└── thread asyncio_0, context C2, a copy of C1" in text.splitlines()


def test_explain_on_the_command_line():
    code, out, err = ctxlab("explain", "shiny-then-bad")
    assert (code, err) == (0, "")
    assert out.startswith("shiny-then-bad  ")
    assert "onion: BadMiddleware → ShinyMiddleware → app" in out
    assert "task T2 (created by T1), context C2 (copied from C1)" in out
    assert "source: " in out and "middleware_order.py" in out


def test_explain_draws_a_tree_for_each_of_three_requests():
    """Three requests (the most any bundled scenario sends): three trees,
    and no note of requests left out."""
    code, document, _ = ctxlab_json("run", "lazy-worker-first-request")
    requests = sorted({o["request"] for o in document["scenarios"][0]["observations"]})
    code, out, err = ctxlab("explain", "lazy-worker-first-request")
    assert (code, err, requests) == (0, "", [1, 2, 3])
    assert [line for line in out.splitlines() if re.fullmatch(r"request \d+", line)] == [
        f"request {n}" for n in requests
    ]
    assert "more requests" not in out


def test_run_notes_the_naive_reading_on_each_pitfall_row_only():
    """`naive:` under an expected value where a naive reading expects
    otherwise (the JSON's `naive` differs from `expected`), nowhere else."""
    for name in ("bad-then-shiny", "lazy-worker-clean-context"):
        code, document, _ = ctxlab_json("run", name)
        pitfalls = [o for o in document["scenarios"][0]["observations"] if o["naive"] != o["expected"]]
        code, out, _ = ctxlab("run", name)
        assert code == 0 and out.count("naive: ") == len(pitfalls), out
        for o in pitfalls:
            assert f"naive: {json.dumps(o['naive'])}" in out, out
        counted = [line for line in out.splitlines() if "pitfall row(s)" in line]
        assert counted == ([f"{len(pitfalls)} pitfall row(s): a naive reading expects otherwise"] if pitfalls else [])
    assert pitfalls == []  # the second: a scenario without pitfalls, for the count of none


@pytest.fixture(scope="module")
def bad_only_report():
    code, out, err = ctxlab("run", "bad-only", "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(
    "errors, verdict",
    [
        ([None, None, None], "no observation differs between columns"),
        ([None, None, "uv: no solution"], "no observation differs between the neighbouring columns that ran"),
        (["uv: no solution", None, "uv: no solution"], "nothing was compared: no two neighbouring columns both ran"),
        ([None, "uv: no solution", None], "nothing was compared: no two neighbouring columns both ran"),
        (["uv: no solution", "uv: no solution"], "nothing was compared: no two neighbouring columns both ran"),
    ],
)
def test_a_matrix_without_changes_says_what_was_compared(bad_only_report, errors, verdict):
    """Only neighbouring columns that both ran are compared: a grid whose
    columns failed must not read as "no observation differs"."""
    columns = [
        matrix.Column(f"c{index}", [], report={} if error else bad_only_report, error=error)
        for index, error in enumerate(errors)
    ]
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    render.matrix(matrix.grid(columns), console)
    lines = console.export_text().splitlines()
    assert lines[-1] == verdict
    rows = [line.split()[2:] for line in lines if line.split()[:2] == ["bad-only", "(asgi)"]]
    assert rows == ([["error" if error else "pass" for error in errors]] if None in errors else [])
    # Each column that failed says why, under the grid; the others say nothing.
    assert [line for line in lines if line.startswith("c")] == [f"c{i}: {e}" for i, e in enumerate(errors) if e]


def test_a_matrix_change_is_starred_and_listed_with_its_request(bad_only_report):
    """The grid stars the cell where an observation first differs from the
    column before, and lists the change: column, scenario, server, request,
    probe, variable, before → after."""
    changed = json.loads(json.dumps(bad_only_report))
    changed["scenarios"][0]["observations"][0]["observed"] = {"random_int": 7}
    columns = [
        matrix.Column(label, [], report=report) for label, report in [("old", bad_only_report), ("new", changed)]
    ]
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    render.matrix(matrix.grid(columns), console)
    lines = console.export_text().splitlines()
    assert [line.split() for line in lines if line.split()[:1] == ["bad-only"]] == [
        ["bad-only", "(asgi)", "pass", "pass", "*"]
    ]
    assert lines[-1] == '  new: bad-only (asgi) request 1 endpoint context: {"random_int": 42} → {"random_int": 7}'


def test_a_failed_column_does_not_end_the_comparison_of_the_ones_after_it(bad_only_report):
    """old, a column that could not be built, old again, new: the change
    from the third column to the fourth is still found."""
    changed = json.loads(json.dumps(bad_only_report))
    changed["scenarios"][0]["observations"][0]["observed"] = {"random_int": 7}
    columns = [
        matrix.Column("old", [], report=bad_only_report),
        matrix.Column("broken", [], report={}, error="uv: no solution"),
        matrix.Column("old-again", [], report=bad_only_report),
        matrix.Column("new", [], report=changed),
    ]
    result = matrix.grid(columns)
    assert [(c["previous"], c["column"]) for c in result["changes"]] == [("old-again", "new")]


def test_two_servers_mark_a_value_they_disagree_on_and_a_probe_only_one_saw():
    """`--server both`: a row whose values differ while the scenario expects
    the same on both servers is "unexpected"; a probe one server never
    reached is "one side only"; neither explains itself as an expected
    difference."""
    asgi = run_named("bad-only")
    first, *rest = asgi.observations
    other = replace(asgi, observations=[replace(first, observed={"random_int": 7}), *rest[:-1]])
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    render.side_by_side(catalog()["bad-only"], asgi, other, console)
    text = console.export_text()  # once: exporting clears what the console recorded
    rows = {line.split()[1]: line.rstrip() for line in text.splitlines() if line.split()[:1] == ["1"]}
    assert rows[first.probe].endswith(" unexpected")
    assert rows[rest[-1].probe].split()[-4:] == ["-", "one", "side", "only"]
    assert "Why they differ" not in text


def test_explain_of_more_requests_than_trees_says_how_many_are_left_out():
    """Three trees at most; the rest are counted, with the command that
    shows them all.  One request: one tree and no such note."""
    entry = catalog()["bad-then-shiny"]
    result = run_named("bad-then-shiny")
    (observed_request,) = {o.request for o in result.observations}
    for requests, trees, note in [
        (5, 3, "(+2 more requests; `ctxlab run bad-then-shiny` shows all)"),
        (1, 1, None),
    ]:
        many = replace(
            result,
            observations=[replace(o, request=n) for n in range(1, requests + 1) for o in result.observations],
        )
        console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
        render.explain(load(entry), many, "", console)
        lines = console.export_text().splitlines()
        assert [line for line in lines if re.fullmatch(r"request \d+", line)] == [
            f"request {n}" for n in range(1, trees + 1)
        ]
        assert [line for line in lines if "more requests" in line] == ([note] if note else [])
    assert observed_request == 1


def test_where_a_probe_ran_stays_on_one_line_at_the_narrowest_width():
    """At 40 columns, the narrowest ctxlab lays out, the other columns
    wrap; the task and context a probe ran in never do."""
    result = run_named("bad-then-shiny")
    console = Console(file=io.StringIO(), record=True, width=40, color_system=None)
    console.print(render.observation_table(result.observations))
    out = console.export_text()
    for o in result.observations:
        task = f"{o.task}←{o.parent_task}" if o.parent_task else o.task
        assert f"{task} {o.context}" in out, out


def test_a_probe_outside_any_task_shows_its_context_and_thread():
    """No task (a thread of a pool, or the server's own code): the cell
    names the context and the thread, or "-" for what is unknown."""
    (first, *_) = run_named("bad-then-shiny").observations
    rows = [
        replace(first, task=None, context="C3", thread="asyncio_0"),
        replace(first, task=None, context=None, thread=None),
    ]
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    console.print(render.observation_table(rows))
    text = console.export_text()
    cells = [line.split()[-1] for line in text.splitlines() if "endpoint" in line or line.split()[:1] == ["context"]]
    assert cells == ["C3", "asyncio_0", "-", "-"], text


def test_two_servers_that_differ_as_expected_in_one_row_say_why():
    """One row whose expected values differ between the servers: it is
    marked "expected", and the scenario's why follows the table."""
    asgi = run_named("bad-only")
    first, *rest = asgi.observations
    other = replace(asgi, observations=[replace(first, observed="elsewhere", expected="elsewhere"), *rest])
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    render.side_by_side(catalog()["bad-only"], asgi, other, console)
    text = console.export_text()
    notes = [line.split()[-1] for line in text.splitlines() if line.split()[:1] == ["1"]]
    assert notes.count("expected") == 1 and "unexpected" not in notes, text
    assert f"Why they differ: {load(catalog()['bad-only']).why.split()[0]}" in text, text


def test_a_run_on_a_real_server_says_which_in_its_head_line():
    """In process, the head line names no server; on uvicorn it says so."""
    for server, head in [
        ("asgi", r"bad-only  PASS  \d+ ms"),
        ("uvicorn", r"bad-only  PASS  on uvicorn.*  \d+ ms"),
    ]:
        console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
        render.scenario_report(run_named("bad-only", server), "summary", console)
        text = console.export_text()
        assert re.fullmatch(head, text.splitlines()[0]), text


def test_run_titles_each_request_and_what_ran_outside_any():
    """A table per request, titled with its number; what the lifespan
    saw (no request) is titled as such."""
    for name in ("lifespan-var", "bad-then-shiny"):
        _, document, _ = ctxlab_json("run", name)
        requests = list(dict.fromkeys(o["request"] for o in document["scenarios"][0]["observations"]))
        _, out, _ = ctxlab("run", name)
        titles = [line for line in out.splitlines() if re.fullmatch(r"request \d+|outside any request", line)]
        assert titles == [f"request {n}" if n else "outside any request" for n in requests], out
        assert (None in requests) == (name == "lifespan-var")


def test_run_numbers_each_row_as_the_json_does():
    _, document, _ = ctxlab_json("run", "bad-then-shiny")
    _, out, _ = ctxlab("run", "bad-then-shiny")
    numbers = [line.split()[0] for line in out.splitlines() if re.match(r"\s*\d+\s+\S+\s+[✓✗]", line)]
    assert numbers == [str(o["seq"]) for o in document["scenarios"][0]["observations"]], out


def test_two_servers_list_rows_by_request_then_in_the_order_probes_ran():
    result = run_named("bad-only")
    endpoint, after = result.observations[:2]
    # A probe that ran twice in request 1, another after it, request 2, and
    # last one outside any request (shutdown): that one comes first.
    rows = [endpoint, endpoint, after, replace(endpoint, request=2), replace(after, request=None)]
    both = replace(result, observations=rows)
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    render.side_by_side(catalog()["bad-only"], both, both, console)
    text = console.export_text()
    shown = [line.split()[:2] for line in text.splitlines() if line.split()[:1] in (["-"], ["1"], ["2"])]
    assert shown == [[str(o.request or "-"), o.probe] for o in [rows[-1], *rows[:-1]]], text


def test_a_task_tree_keeps_a_creator_that_saw_nothing():
    """A task whose creator ran no probe still hangs under that creator."""
    result = run_named("bad-then-shiny")
    (endpoint,) = [o for o in result.observations if o.parent_task]
    tree = render.task_tree(replace(result, observations=[endpoint]), endpoint.request)
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    console.print(tree)
    assert console.export_text().splitlines()[1:3] == [
        f"└── task {endpoint.parent_task}",
        f"    └── task {endpoint.task} (created by {endpoint.parent_task}), context {endpoint.context}"
        f" (copied from {endpoint.parent_context})",
    ]
