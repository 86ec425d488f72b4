"""`ctxlab trace` end to end: the real CLI in a subprocess on the fixture apps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ctxlab, ctxlab_json
from test_trace import body_leaks_on_asyncio, line_of

FIXTURES = Path(__file__).parent / "fixtures"
APP_DIR = ("--app-dir", str(FIXTURES))


def source_line(name: str, text: str) -> int:
    lines = (FIXTURES / "trace_apps" / f"{name}.py").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


class TestHumanOutput:
    """Findings come first, in plain words; exit 1 when there is one."""

    def test_seed_000_audit_prints_one_lost_finding(self):
        code, out, err = ctxlab("trace", "trace_apps.audit:app", "--path", "/users/7", *APP_DIR)
        assert code == 1, err
        assert out.count("LOST") == 1 and "LEAK" not in out
        assert f"read  trace_apps/audit.py:{source_line('audit', 'seen.append(user.get')}" in out
        assert f"set   trace_apps/audit.py:{source_line('audit', 'user.set(')}" in out
        assert "BaseHTTPMiddleware's call_next" in out
        assert "fix   Pass the value on request.state" in out
        assert "ctxlab explain dependency-audit" in out
        assert out.index("LOST") < out.index("request 1  GET /users/7")  # findings first

    def test_executor_leak_in_request_2_names_request_1(self):
        code, out, _ = ctxlab("trace", "trace_apps.executor_leak:app", *APP_DIR)
        assert code == 1
        assert "LEAK tenant  in request 2" in out
        assert f"executor_leak.py:{source_line('executor_leak', 'tenant.set(')} in job (request 1" in out

    def test_clean_app_has_no_finding_and_exits_0(self):
        code, out, err = ctxlab("trace", "trace_apps.clean:app", *APP_DIR)
        assert (code, err) == (0, "")
        assert not {"LOST", "LEAK", "RESET-ERROR"} & set(out.split())
        assert "no finding in 2 request(s)" in out

    def test_on_uvicorn_with_lifespan(self):
        code, out, _ = ctxlab(
            "trace", "trace_apps.consumer:app", "--server", "uvicorn", "--lifespan", "--requests", "1", *APP_DIR
        )
        assert code == 1
        assert "created at startup in lifespan" in out and "on uvicorn" in out

    def test_keepalive_leak_on_uvicorn_names_the_previous_request(self, tmp_path):
        record = tmp_path / "seen.jsonl"  # what the app found in `user`, one line per request
        body = "x" * (120 * 1024)  # past uvicorn's 64 KiB mark, within one argument's limit
        code, out, err = ctxlab(
            "trace", "trace_apps.keepalive:app", "--server", "uvicorn", "--requests", "2",
            "--method", "POST", "--data", body, *APP_DIR, env={"TRACE_KEEPALIVE_SEEN": str(record)},
        )  # fmt: skip
        seen = [json.loads(line) for line in record.read_text().splitlines()]
        if not body_leaks_on_asyncio():
            assert (code, seen) == (0, [None, None])
            return
        assert seen == [None, "user-1"]  # request 2 really started with request 1's user
        assert code == 1, err
        assert out.count("LEAK") == 1 and "LEAK user  in request 2" in out
        assert f"keepalive.py:{source_line('keepalive', 'found = user.get()')} in endpoint (request 2" in out
        assert f"keepalive.py:{source_line('keepalive', 'user.set(')} in endpoint (request 1" in out
        assert f': "{seen[1]}"' in out
        assert "why   the previous request on this keep-alive connection" in out
        assert "ctxlab explain keepalive-large-body-leak" in out


class TestJson:
    """--json: one document on stdout, schema_version 1."""

    def test_schema(self):
        code, out, _ = ctxlab("trace", "trace_apps.yield_reset:app", "--json", "--requests", "1", "--header", "x-a: 1",
                              "--method", "get", *APP_DIR)  # fmt: skip
        assert code == 1
        document = json.loads(out)
        assert document["schema_version"] == 1 and document["app"] == "trace_apps.yield_reset:app"
        assert document["server"] == "asgi"
        assert document["requests"] == [{"request": 1, "method": "GET", "path": "/", "status": 200, "error": None}]
        assert document["summary"] == {
            "requests": 1,
            "events": len(document["events"]),
            "lost": 0,
            "leaked": 0,
            "reset_errors": 1,
        }
        event = document["events"][0]
        assert {
            "seq",
            "request",
            "op",
            "var",
            "value",
            "file",
            "line",
            "function",
            "task",
            "parent_task",
            "context",
            "thread",
        } <= event.keys()
        (finding,) = document["findings"]
        assert finding["kind"] == "reset-error" and finding["var"] == "db_session"
        assert (
            {"file", "line", "task", "context", "thread"} <= finding["read"].keys() <= finding["set"].keys() | {"value"}
        )
        assert document["options"]["headers"] == [["x-a", "1"]]


def test_the_task_tree_shows_each_context_copied_from_its_creators():
    """BaseHTTPMiddleware's call_next starts the endpoint's task, whose
    context asyncio copies from the creating task's: the tree says so, for
    each request."""
    code, out, _ = ctxlab("trace", "trace_apps.audit:app", "--path", "/users/7", *APP_DIR)
    assert code == 1 and "\nLOST user  in requests 1, 2\n" in out
    # Events not in the tree are counted: all of them, less the rows shown.
    total = int(re.search(r", (\d+) events$", out.strip()).group(1))
    rows = len(re.findall(r"── (?:get|set|reset) ", out))
    assert f"\n({total - rows} events of library variables the app never touched are not shown" in out
    tree = re.findall(r"task (T\d+)(?: \(created by (T\d+)\))?, context (C\d+) \(copied from (C\d+)\)", out)
    context_of = {task: context for task, _, context, _ in tree}
    created = [(creator, source) for _, creator, _, source in tree if creator]
    assert len(created) == 2 and all(source == context_of[creator] for creator, source in created), out


def test_the_table_shows_what_the_apps_own_code_touched():
    """A variable the app reads and nothing sets, and a library's variable
    the app's code sets (structlog's bind_contextvars): both shown, at the
    app's lines."""
    code, out, _ = ctxlab("trace", "trace_apps.touched:app", "--requests", "1", *APP_DIR)
    shown = [
        found.groups() for line in out.splitlines() if (found := re.search(r"── (get|set) +(.+?) {3}(\S+) ", line))
    ]
    assert code == 0 and "\n(1 events of library variables the app never touched are not shown" in out
    assert shown == [
        ("get", "flag = <unset>", f"trace_apps/touched.py:{line_of('touched', 'flag.get()')}"),
        ("set", 'structlog_request_path = "/"', f"trace_apps/touched.py:{line_of('touched', 'bind_contextvars(')}"),
    ], out


def test_a_reset_that_raised_is_shown_with_what_python_raised():
    """A reset in another context raises ValueError: the table says so, in
    Python's words (less the token's repr, with its addresses), under that
    finding only; a lost value raised nothing, and says nothing of it."""
    import contextvars

    var = contextvars.ContextVar("var")
    token = contextvars.copy_context().run(var.set, 1)
    try:
        var.reset(token)
    except ValueError as exc:
        raised = exc
    code, out, _ = ctxlab("trace", "trace_apps.yield_reset:app", *APP_DIR)
    (line,) = [line for line in out.splitlines() if line.startswith("  raised ")]
    assert code == 1 and line.startswith(f"  raised {type(raised).__name__}: "), out
    assert line.endswith(str(raised).rsplit(">", 1)[1]), (line, str(raised))
    code, out, _ = ctxlab("trace", "trace_apps.audit:app", "--path", "/users/7", *APP_DIR)
    assert code == 1 and "raised" not in out, out


def asgi_get(path: Path, url: str = "/"):
    """GET `url` from the app in the file at `path`, in process, without ctxlab."""
    import asyncio
    import importlib.util

    import httpx

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def answer() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=module.app), base_url="http://t") as client:
            return await client.get(url)

    return asyncio.run(answer())


def test_a_reset_of_a_token_made_before_the_trace_is_what_python_raised():
    """The token was made at import, so the trace never saw its set: the
    reset's error is the one Python raised in the app (which the app
    answers with), and the finding names no set."""
    response = asgi_get(FIXTURES / "trace_apps" / "early_token.py")
    kind, message = response.text.split(": ", 1)
    assert kind == "ValueError"  # what this app is for
    code, out, _ = ctxlab("trace", "trace_apps.early_token:app", "--requests", "1", *APP_DIR)
    assert code == 1, out
    assert f"  raised {kind}: the token {message.rsplit('> ', 1)[1]}\n" in out, out
    reset_line = source_line("early_token", "tenant.reset(token)")
    reset = rf"  reset trace_apps/early_token\.py:{reset_line} in home \(T\d+, C\d+\): <unset>"
    assert re.search(rf"^{reset}$", out, re.MULTILINE), out
    assert f"\nrequest 1  GET / → {response.status_code}\n" in out, out
    assert "\n  set " not in out and "ctxlab explain reset-wrong-context" in out, out


def test_a_reset_with_another_variable_s_token_blames_the_variable_not_the_context():
    """One task, one context: the app's reset fails because the token is
    another ContextVar's (the app answers with what Python raised), so the
    finding neither blames a context nor names this variable's set."""
    response = asgi_get(FIXTURES / "trace_apps" / "other_var_token.py")
    assert response.text.startswith("ValueError: ") and "ContextVar" in response.text  # what this app is for
    code, out, _ = ctxlab("trace", "trace_apps.other_var_token:app", "--requests", "1", *APP_DIR)
    finding = out.split("\n\n")[0]
    assert code == 1 and "why   the token came from another ContextVar's set, not user's\n" in finding, out
    assert "\n  set " not in finding and "reset-wrong-context" not in out, out


@pytest.mark.parametrize(
    "kind, shown",
    [
        ("huge", "<int of 16610 bits>"),
        ("nan", "<float nan>"),
        ("refuses", "<Refuses whose repr() raised RuntimeError>"),
    ],
)
def test_a_value_json_or_repr_cannot_show_changes_nothing_the_app_sees(kind, shown):
    """The app answers the same traced as untraced (its repr raising inside
    the trace failed every request), and --json stays strict JSON."""
    url = f"/?kind={kind}"
    untraced = asgi_get(FIXTURES / "trace_apps" / "odd_values.py", url)
    assert (untraced.status_code, untraced.text) == (200, "same")
    code, out, err = ctxlab("trace", "trace_apps.odd_values:app", "--path", url, "--requests", "1", "--json", *APP_DIR)
    document = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} is no JSON"))
    assert code == 0 and [r["status"] for r in document["requests"]] == [200], err
    assert [e["value"] for e in document["events"]] == [shown, shown]


@pytest.mark.parametrize("path", ["/typo", "/"])
def test_a_path_no_route_takes_is_nothing_to_trace_unless_a_variable_was_used(path):
    """Every request a 404 or a 400 (the app's own answer) and no ContextVar
    used: "no finding" would pass CI on a typo, so one line, exit 2.  Where
    the app used one on the way (audit's middleware reads `user`), the
    trace stands."""
    status = asgi_get(FIXTURES / "trace_apps" / "odd_values.py", path).status_code
    assert status in (400, 404)
    code, out, err = ctxlab("trace", "trace_apps.odd_values:app", "--path", path, *APP_DIR)
    assert code == 2 and out == ""
    assert err == (
        f"ctxlab: error: every request to trace_apps.odd_values:app failed (request 1: status {status}) and no "
        "ContextVar was used: there is nothing to trace; check the app and --path\n"
    )
    code, out, _ = ctxlab("trace", "trace_apps.audit:app", "--path", "/typo", *APP_DIR)
    assert code == 0 and out.count(" → 404\n") == 2 and "get   user = <unset>" in out, out


def test_requests_that_all_fail_are_told_by_the_first():
    """400, then 404: the line names request 1's status."""
    code, out, err = ctxlab("trace", "trace_apps.refuses_in_turn:app", "--requests", "3", *APP_DIR)
    assert code == 2 and out == ""
    assert "failed (request 1: status 400) and no ContextVar was used" in err, err


def test_a_large_value_is_cut_where_shown_and_kept_as_its_digest(tmp_path):
    """A 100,000-character body read four times a request: the tree shows
    its first 1,000 characters and its length; the saved trace keeps its
    size and digest (a 5 MB one made a file diff refused), and diff of it
    finds nothing changed."""
    import hashlib

    text = json.dumps("x" * 100_000)  # the app's value, as JSON
    saved = tmp_path / "trace.json"
    code, out, err = ctxlab("trace", "trace_apps.big_value:app", "--requests", "1", "-o", str(saved), *APP_DIR)
    assert code == 0, err
    # The set and four gets, each its first 1,000 characters (a quote, then
    # the x's, which the tree may wrap) and the length.
    unwrapped = " ".join(re.sub("[│├└─]", " ", out).split())  # the tree's guides and folds left out
    assert unwrapped.count(f"… ({len(text):,} characters)") == 5, out
    assert sum(len(run) for run in re.findall(r"x{2,}", out)) == 5 * 999
    assert saved.stat().st_size < 20_000
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    values = {event["value"] for event in json.loads(saved.read_text())["events"]}
    assert values == {f"<str of {len(text):,} characters as JSON, sha256 {digest}>"}
    code, out, err = ctxlab("diff", str(saved))
    assert code == 0 and out.splitlines()[-1] == "no changes since the saved trace", err


def test_a_job_in_a_copy_of_the_request_task_s_context_hangs_under_that_task():
    """copy_run's endpoint (in the request's task) runs its job in a copy
    of its own context, on a pool thread: the thread's node sits under
    the task, with the context it copied."""
    code, out, _ = ctxlab("trace", "trace_apps.copy_run:app", "--requests", "1", *APP_DIR)
    lines = out.splitlines()
    (task,) = [n for n, line in enumerate(lines) if line.startswith("└── task ")]
    made = re.fullmatch(r"└── task T\d+, context (C\d+) \(copied from C\d+\)", lines[task])
    (thread,) = [line for line in lines if " thread " in line]
    assert code == 0 and made and re.fullmatch(rf"    └── thread \S+, context C\d+, a copy of {made[1]}", thread), out
    assert lines.index(thread) > task


def test_the_tree_marks_each_snapshot_read_and_no_other():
    """The gets a copy_context() snapshot stands for end with a mark; the
    app's own gets and sets do not."""
    wide = {"COLUMNS": "500"}
    _, document, _ = ctxlab_json("trace", "trace_apps.snapshot_reader:app", "--requests", "1", *APP_DIR, env=wide)
    code, out, _ = ctxlab("trace", "trace_apps.snapshot_reader:app", "--requests", "1", *APP_DIR, env=wide)
    events = [line for line in out.splitlines() if re.search(r"── (get|set|reset) ", line)]
    marked = [
        line.split("── ")[1].split(" = ")[0].split() for line in events if line.endswith(" (copy_context snapshot)")
    ]
    assert marked == [["get", e["var"]] for e in document["events"] if e.get("snapshot")] != [], out


class TestBaseline:
    """A saved trace is compared with a new one: what changed exits 1."""

    def test_unchanged_app_diffs_clean(self, tmp_path):
        saved = tmp_path / "trace.json"
        code, _, _ = ctxlab("trace", "trace_apps.audit:app", "--path", "/users/7", "-o", str(saved), *APP_DIR)
        assert code == 1 and json.loads(saved.read_text())["summary"]["lost"] == 1
        code, out, _ = ctxlab("diff", str(saved))
        assert code == 0 and "no changes" in out
        code, _, err = ctxlab("trace", "trace_apps.audit:app", "--path", "/users/7", "--baseline", str(saved), *APP_DIR)
        assert code == 1  # the finding is still there
        code, out, _ = ctxlab("trace", "trace_apps.clean:app", "--baseline", str(saved), *APP_DIR)
        assert code == 1 and "change(s) since the saved trace" in out
        code, out, _ = ctxlab("trace", "trace_apps.clean:app", "--baseline", str(saved), "--json", *APP_DIR)
        document = json.loads(out)
        assert code == 1 and document["schema_version"] == 1 and document["app"] == "trace_apps.clean:app"
        assert "finding" in {c["what"] for c in document["changes"]} and document["findings"] == []

    def test_values_that_name_their_address_are_no_change(self, tmp_path):
        """sentry-sdk (which asgi-correlation-id's app loads) sets Scope
        objects whose repr names their address, different in every process:
        a diff of the unchanged app must not report them."""
        first, second = tmp_path / "first.json", tmp_path / "second.json"
        for saved in (first, second):
            code, _, err = ctxlab("trace", "trace_apps.clean:app", "-o", str(saved), *APP_DIR)
            assert code == 0, err

        def scopes(saved):
            document = json.loads(saved.read_text())
            return [e["value"] for e in document["events"] if e["var"] == "isolation_scope" and e["op"] == "set"]

        assert scopes(first) and all("id=0x" in value for value in scopes(first))
        assert scopes(first) != scopes(second)  # the addresses, from sentry's own repr
        code, out, err = ctxlab("diff", str(first))
        assert code == 0 and "no changes since the saved trace" in out, err
        # Text around an address still counts.
        document = json.loads(first.read_text())
        scope = next(e for e in document["events"] if e["var"] == "isolation_scope" and e["op"] == "set")
        scope["value"] = scope["value"].replace("ISOLATION", "CURRENT")
        first.write_text(json.dumps(document))
        code, out, _ = ctxlab("diff", str(first), "--json")
        assert code == 1 and [c["what"] for c in json.loads(out)["changes"]] == ["event"]

    def test_a_changed_behaviour_is_reported(self, tmp_path):
        saved = tmp_path / "trace.json"
        ctxlab("trace", "trace_apps.executor_leak:app", "-o", str(saved), *APP_DIR)
        document = json.loads(saved.read_text())
        # As if the leak were new: before the upgrade, request 2's job saw nothing.
        document["findings"] = []
        read = next(e for e in document["events"] if e["request"] == 2 and e["op"] == "get")
        read["value"] = "<unset>"
        saved.write_text(json.dumps(document))
        code, out, _ = ctxlab("diff", str(saved))
        out = " ".join(out.split())  # the table may fold long cells
        assert code == 1
        assert "leak tenant read at trace_apps/executor_leak.py:job" in out
        assert "request 2: get tenant in job" in out and '"tenant-1"' in out
        code, out, _ = ctxlab("diff", str(saved), "--json")
        document = json.loads(out)
        assert code == 1 and {c["what"] for c in document["changes"]} == {"finding", "event"}
        assert document["schema_version"] == 1 and document["app"] == "trace_apps.executor_leak:app"


class TestUsageErrors:
    """Bad input: one line on stderr, exit 2, no output file."""

    def test_cannot_import(self):
        code, out, err = ctxlab("trace", "trace_apps.nope:app", *APP_DIR)
        assert code == 2 and out == "" and err.startswith("ctxlab: error: cannot import") and err.count("\n") == 1

    def test_bad_options(self, tmp_path):
        for args, message in [
            (["--header", "nocolon"], "--header expects K:V"),
            (["--header", "Bad Name: x"], "--header expects K:V"),
            (["--header", "X-A: 1\r\nX-Injected: 2"], "--header expects K:V"),
            (["--method", "G T"], "--method expects an HTTP method"),
            (["--method", ""], "--method expects an HTTP method"),
            (["--path", "users"], "--path must start with '/'"),
            # Bytes that are not UTF-8 on the command line (b"/\xff"), and a
            # header value HTTP cannot carry: the request could not be made.
            (["--path", "/\udcff"], "--path must be UTF-8 text, got '/\\udcff'"),
            (["--data", "\udcff"], "--data must be UTF-8 text"),
            (["--header", "X-A: \u20ac"], "--header values are Latin-1 text"),
            (["--requests", str(10**20)], "less than or equal to 100000"),
            (["--server", "both"], "--server both"),
            (["-o", str(tmp_path / "missing" / "x.json")], "not a writable directory"),
            (["--baseline", str(tmp_path / "absent.json")], "cannot read"),
        ]:
            code, _, err = ctxlab("trace", "trace_apps.clean:app", *args, *APP_DIR)
            assert code == 2 and message in err, (args, err)
            assert err.count("\n") == 1

    def test_malformed_saved_trace(self, tmp_path):
        bad = tmp_path / "t.json"
        bad.write_text(json.dumps({"schema_version": 1, "app": "x:app", "events": [], "options": {}}))
        code, _, err = ctxlab("diff", str(bad))
        assert code == 2 and "malformed trace" in err
