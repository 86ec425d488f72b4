"""`ctxlab trace` on real apps: each finding is checked against what the
app itself observed (its own `seen` list), in process and on uvicorn."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path

import pytest

from ctxlab.trace import trace

FIXTURES = Path(__file__).parent / "fixtures"
# In process, and on uvicorn with each event loop (uvloop's transports do
# not capture the context, so what leaks differs: the app's record says).
SERVERS = ["asgi", "uvicorn", "uvicorn+uvloop"]
# Python 3.14's thread_inherit_context: a new thread starts in a copy of the
# context that started it (each test's app says what it then saw).
INHERITS = bool(getattr(sys.flags, "thread_inherit_context", 0))


def app_module(name: str):
    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    return importlib.import_module(f"trace_apps.{name}")


def traced(name: str, server: str = "asgi", **options):
    """Trace a fixture app; returns the result and what the app saw."""
    module = app_module(name)
    observed = getattr(module, "seen", None)
    if observed is None:
        observed = module.logged
    observed.clear()
    if hasattr(module, "numbers"):  # request numbering starts again with each trace
        module.numbers = itertools.count(1)
    server, _, loop = server.partition("+")
    if loop:
        pytest.importorskip(loop)
    result = trace(f"trace_apps.{name}:app", server=server, app_dir=FIXTURES, loop=loop or "asyncio", **options)
    return result.to_json(), list(observed)


def line_of(name: str, text: str) -> int:
    """The line of the fixture's source that contains `text` (exactly once)."""
    lines = [n for n, line in enumerate(Path(app_module(name).__file__).read_text().splitlines(), 1) if text in line]
    assert len(lines) == 1, (text, lines)
    return lines[0]


def body_leaks_on_asyncio() -> bool:
    """Whether uvicorn on the asyncio loop starts a request in a copy of
    the previous one's context after a large body, as the
    keepalive-large-body-leak scenario documents (measured there): not from
    Python 3.15, and not on uvicorn 0.39 to 0.44 (a fresh context per request)."""
    from importlib.metadata import version

    uvicorn = tuple(int(part) for part in version("uvicorn").split(".")[:2])
    return sys.version_info < (3, 15) and not (0, 39) <= uvicorn < (0, 45)


def only(findings: list[dict], kind: str) -> dict:
    assert [f["kind"] for f in findings] == [kind], findings
    return findings[0]


@pytest.mark.parametrize("server", SERVERS)
class TestLost:
    """A value set by a request that one of its reads never received is `lost`."""

    def test_base_http_audit_after_call_next(self, server):
        result, seen = traced("audit", server, path="/users/7")
        assert seen == [None, None]  # the audit really read nothing
        finding = only(result["findings"], "lost")
        assert finding["var"] == "user" and finding["requests"] == [1, 2]
        assert (finding["read"]["file"], finding["read"]["line"]) == (
            "trace_apps/audit.py",
            line_of("audit", "seen.append(user.get"),
        )
        assert finding["read"]["value"] == "<unset>"
        assert (finding["set"]["line"], finding["set"]["value"]) == (line_of("audit", "user.set("), {"id": 7})
        assert "BaseHTTPMiddleware's call_next" in finding["boundary"]
        assert (
            f"AuditMiddleware.dispatch (trace_apps/audit.py:{line_of('audit', 'await call_next')}"
            in finding["boundary"]
        )
        assert "request.state" in finding["fix"] and finding["scenario"] == "dependency-audit"
        assert result["summary"]["lost"] == 1

    def test_def_dependency_runs_in_a_thread_pool_copy(self, server):
        result, seen = traced("sync_dependency", server)
        assert seen == ["anonymous", "anonymous"]  # the default, not "alice"
        findings = result["findings"]
        assert {f["kind"] for f in findings} == {"lost"}
        assert {f["read"]["line"] for f in findings} == {
            line_of("sync_dependency", "seen.append"),
            line_of("sync_dependency", "return {"),
        }
        assert all(f["set"]["line"] == line_of("sync_dependency", "user.set(") for f in findings)
        assert all("thread-pool copy" in f["boundary"] and "run_in_threadpool" in f["boundary"] for f in findings)
        assert findings[0]["set"]["thread"] != "MainThread"

    def test_executor_job_without_copy_context(self, server):
        result, seen = traced("executor_lost", server)
        if INHERITS:  # the pool thread started in a copy of request 1's context, and kept it
            assert seen == ["req-1", "req-1"]
            finding = only(result["findings"], "leak")
            assert finding["requests"] == [2] and "runs in a copy of" in finding["boundary"]
        else:
            assert seen == [None, None]
            finding = only(result["findings"], "lost")
            assert finding["requests"] == [1, 2] and "worker thread's own context" in finding["boundary"]
            assert "copy_context" in finding["fix"]
        assert finding["read"]["line"] == line_of("executor_lost", "seen.append(request_id.get")
        assert finding["set"]["line"] == line_of("executor_lost", "request_id.set(")
        assert finding["set"]["value"] == "req-1" and finding["set"]["request"] == 1

    @pytest.mark.parametrize("name", ["dispatch_task", "dispatch_loop_task"])
    def test_task_the_app_starts_inside_dispatch(self, server, name):
        """Created by the app's own code in dispatch, below call_next's frames:
        the boundary names dispatch, not call_next."""
        result, seen = traced(name, server)
        assert seen == [None, None]
        finding = only(result["findings"], "lost")
        assert finding["set"]["line"] == line_of(name, 'user.set("alice")')
        boundary = finding["boundary"]
        assert f"created in Loader.dispatch (trace_apps/{name}.py:{line_of(name, 'create_task')})" in boundary
        assert "call_next" not in boundary

    def test_consumer_task_created_at_startup(self, server):
        result, seen = traced("consumer", server, lifespan=True)
        assert seen == [None, None]
        finding = only(result["findings"], "lost")
        assert finding["read"]["line"] == line_of("consumer", "seen.append(request_id.get")
        assert finding["set"]["line"] == line_of("consumer", "request_id.set(")
        assert "created at startup" in finding["boundary"]
        assert (
            f"lifespan (trace_apps/consumer.py:{line_of('consumer', 'asyncio.create_task(consume')})"
            in finding["boundary"]
        )

    def test_structlog_key_missing_from_a_log_line(self, server):
        result, logged = traced("structlog_audit", server)
        access = [line for line in logged if line["event"] == "access"]
        assert len(access) == 2 and all("user" not in line for line in access)
        assert all(line["user"] == "alice" for line in logged if line["event"] == "endpoint")
        finding = only(result["findings"], "lost")
        assert finding["var"] == "structlog_user"
        assert finding["read"]["line"] == line_of("structlog_audit", 'log.info("access"')
        assert finding["set"]["line"] == line_of("structlog_audit", "bind_contextvars(")
        snapshots = [e for e in result["events"] if e.get("snapshot")]
        assert {e["line"] for e in snapshots} == {
            line_of("structlog_audit", 'log.info("access"'),
            line_of("structlog_audit", 'log.info("endpoint"'),
        }


@pytest.mark.parametrize("server", SERVERS)
class TestLeak:
    """A value one request set, read by another request, is a `leak`."""

    def test_executor_job_sets_without_reset(self, server):
        result, seen = traced("executor_leak", server)
        assert seen == [None, "tenant-1"]  # request 2's job really found request 1's tenant
        finding = only(result["findings"], "leak")
        assert finding["request"] == 2 and finding["set"]["request"] == 1
        assert finding["read"]["line"] == line_of("executor_leak", "seen.append(tenant.get")
        assert (finding["set"]["line"], finding["set"]["value"]) == (
            line_of("executor_leak", "tenant.set("),
            "tenant-1",
        )
        assert "still holds what request 1 set" in finding["boundary"]
        # With 3.14's thread_inherit_context the thread's context is a copy
        # of the one it started in, which the boundary says.
        assert ("made as it started" in finding["boundary"]) == INHERITS
        assert finding["scenario"] == "executor-thread-leak"


@pytest.mark.parametrize("server", SERVERS)
class TestResetError:
    """A reset that raised is a `reset-error`, with the token's set."""

    def test_def_yield_dependency_resets_in_another_copy(self, server):
        result, seen = traced("yield_reset", server)
        assert seen == ["ValueError", "ValueError"]
        finding = only(result["findings"], "reset-error")
        assert finding["read"]["line"] == line_of("yield_reset", "db_session.reset(")
        assert finding["set"]["line"] == line_of("yield_reset", "db_session.set(")
        assert finding["read"]["context"] != finding["set"]["context"]
        assert "two different thread-pool copies" in finding["boundary"] and "async def" in finding["fix"]
        resets = [e for e in result["events"] if e["op"] == "reset"]
        assert [e["raised"].split(":")[0] for e in resets] == ["ValueError", "ValueError"]


@pytest.mark.parametrize("server", SERVERS)
class TestClean:
    """An app that passes values correctly gives no finding at all."""

    def test_pure_asgi_and_request_state(self, server):
        result, seen = traced("clean", server)
        assert seen == [("cid-1", "alice"), ("cid-2", "alice")]
        assert result["findings"] == []
        assert result["summary"] == {
            "requests": 2,
            "events": len(result["events"]),
            "lost": 0,
            "leaked": 0,
            "reset_errors": 0,
        }
        sets = [e for e in result["events"] if e["op"] == "set" and e["var"] == "correlation_id"]
        # No app frame is on the stack: the library's own file and line.
        assert [e["value"] for e in sets] == ["cid-1", "cid-2"]
        assert all(e["file"] == "asgi_correlation_id/middleware.py" for e in sets)


class TestRecording:
    """What the recorder records and what it leaves out."""

    def test_never_records_ctxlab_variables(self):
        result, _ = traced("audit", path="/users/1")
        assert not [e for e in result["events"] if e["var"].startswith("ctxlab.")]

    def test_var_narrows_the_recording(self):
        result, _ = traced("executor_lost", variables=["tenant"])
        assert result["events"] == [] and result["findings"] == []
        result, _ = traced("executor_lost", variables=["request_id"])
        assert {e["var"] for e in result["events"]} == {"request_id"}

    def test_events_name_task_context_thread_and_request(self):
        result, _ = traced("audit", path="/users/3")
        user_sets = [e for e in result["events"] if e["var"] == "user" and e["op"] == "set"]
        assert [e["request"] for e in user_sets] == [1, 2]
        first = user_sets[0]
        assert first["task"].startswith("T") and first["parent_task"].startswith("T")
        assert first["context"].startswith("C") and first["thread"] == "MainThread"
        assert first["function"] == "current_user"


class TestKeepAlive:
    """`trace --server uvicorn` sends its requests over one keep-alive
    connection, where uvicorn may start a request in a copy of the previous
    one's context."""

    def test_previous_request_on_the_connection_leaks(self):
        body = b"x" * (300 * 1024)  # past uvicorn's 64 KiB mark: reading is paused until the app reads
        result, seen = traced("keepalive", "uvicorn", method="POST", data=body)
        assert seen == [None, "user-1" if body_leaks_on_asyncio() else None]
        if seen[1] is None:
            assert result["findings"] == []
            return
        finding = only(result["findings"], "leak")
        assert (finding["request"], finding["set"]["request"]) == (2, 1)
        assert (finding["read"]["value"], finding["set"]["value"]) == (seen[1], seen[1])
        assert finding["read"]["line"] == line_of("keepalive", "found = user.get()")
        assert finding["set"]["line"] == line_of("keepalive", "user.set(")
        assert "previous request on this keep-alive connection" in finding["boundary"]
        assert finding["scenario"] == "keepalive-large-body-leak"

    def test_uvloop_keeps_the_connection_clean(self):
        result, seen = traced("keepalive", "uvicorn+uvloop", method="POST", data=b"x" * (300 * 1024))
        assert seen == [None, None] and result["findings"] == []

    def test_in_process_there_is_no_connection(self):
        result, seen = traced("keepalive", "asgi", method="POST", data=b"x" * (300 * 1024))
        assert seen == [None, None] and result["findings"] == []


def test_a_copy_that_is_run_is_no_snapshot_read():
    """The endpoint passes copy_context().run to the executor: the job
    reads the user in the copy (the app's record), and nothing iterated
    the copy, so the trace has no snapshot reads and no finding."""
    result, seen = traced("copy_run")
    assert seen == ["ada", "ada"]
    assert [e for e in result["events"] if e.get("snapshot")] == [] and result["findings"] == []


def test_a_copy_iterated_by_dict_is_read_and_one_handed_on_is_not():
    """dict(copy_context()) reads every variable of the copy (the app's
    record: the user was there); a copy handed to a helper, whose returned
    rows the endpoint iterates, was taken for a snapshot read too."""
    result, seen = traced("copy_handed_on")
    assert seen == [("ada", ["ada"])] * 2
    snapshots = [(e["request"], e["line"], e["value"]) for e in result["events"] if e.get("snapshot")]
    at = line_of("copy_handed_on", "held = dict(")
    assert snapshots == [(1, at, "ada"), (2, at, "ada")]


@pytest.mark.parametrize("path", ["/", "/filtered"])
def test_a_snapshot_the_app_reads_is_read_once_per_request(path):
    """The endpoint iterates copy_context().items() once per request
    (calling sorted and len on the way): one snapshot read of each variable
    the request set, by the app or by a library, with the value the
    snapshot held (on 3.11, whose calls take two instructions, the
    iteration was once out of the tracer's sight; on 3.15, which calls a
    generator expression on the copy itself, it was out of sight again)."""
    result, seen = traced("snapshot_reader", path=path)
    assert [[name for name, _ in held] for held in seen] == [["correlation_id", "user"]] * 2
    snapshots = [
        (e["request"], e["var"], e["value"])
        for e in result["events"]
        if e.get("snapshot") and e["var"] in ("correlation_id", "user")  # (the middleware's Sentry scope too)
    ]
    assert sorted(snapshots) == [(number, *item) for number, held in enumerate(seen, 1) for item in held]


def test_a_trace_diff_names_each_event_by_its_occurrence():
    """A variable read four times in one function, against a trace that
    read it three: the second read's changed value and the fourth read
    are told apart by their occurrence (#2, #4; the first has no number),
    and the reads match in order, not all against the first."""
    from ctxlab.trace import changes

    def read(value, request=1):
        return {
            "request": request,
            "op": "get",
            "var": "user",
            "file": "app.py",
            "function": "endpoint",
            "value": value,
        }

    before = {"findings": [], "events": [read("a"), read("b"), read("c"), read("z", request=2)]}
    after = {"findings": [], "events": [read("a"), read("B"), read("c"), read("d"), read("z", request=2)]}
    assert [(c.what, c.key, c.before, c.after) for c in changes(before, after)] == [
        ("event", "request 1: get user in endpoint (app.py) #2", "b", "B"),
        ("event", "request 1: get user in endpoint (app.py) #4", "<absent>", "d"),
    ]
    before["events"][0]["value"] = "A"
    assert [c.key for c in changes(before, after)][0] == "request 1: get user in endpoint (app.py)"


def test_a_trace_diff_names_a_finding_by_where_it_read_and_set():
    from ctxlab.trace import changes

    def finding(kind, set_=None):
        return {"kind": kind, "var": "user", "read": {"file": "a.py", "function": "audit"}, "set": set_}

    before = {"findings": [], "events": []}
    after = {"findings": [finding("lost", {"file": "b.py", "function": "login"}), finding("reset-error")], "events": []}
    assert [(c.what, c.key, c.before, c.after) for c in changes(before, after)] == [
        ("finding", "lost user read at a.py:audit, set at b.py:login", "<absent>", "found"),
        ("finding", "reset-error user read at a.py:audit", "<absent>", "found"),
    ]


def test_code_made_at_run_time_keeps_the_name_it_was_given(tmp_path, monkeypatch):
    """A set in code the app compiled itself (`<generated>`, as exec'd
    code is named) is shown at that name, not as a file of the working
    directory."""
    (tmp_path / "generated_app.py").write_text(
        "import contextvars\n"
        "from starlette.applications import Starlette\n"
        "from starlette.middleware.base import BaseHTTPMiddleware\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "user = contextvars.ContextVar('user', default=None)\n"
        "exec(compile('def remember(v):\\n    user.set(v)\\n', '<generated>', 'exec'), globals())\n"
        "seen = []\n"
        "async def home(request):\n"
        "    remember('alice')\n"
        "    return PlainTextResponse('hi')\n"
        "class Audit(BaseHTTPMiddleware):\n"
        "    async def dispatch(self, request, call_next):\n"
        "        response = await call_next(request)\n"
        "        seen.append(user.get())\n"
        "        return response\n"
        "app = Starlette(routes=[Route('/', home)])\n"
        "app.add_middleware(Audit)\n"
    )
    monkeypatch.chdir(FIXTURES)
    try:
        result = trace("generated_app:app", requests=1, app_dir=tmp_path).to_json()
        module = sys.modules["generated_app"]
    finally:
        sys.modules.pop("generated_app", None)
    assert module.seen == [None]  # the app's own record: its middleware lost the value
    code = module.remember.__code__
    finding = only(result["findings"], "lost")
    assert (finding["set"]["file"], finding["set"]["line"]) == (code.co_filename, code.co_firstlineno + 1)


def test_a_trace_diff_reads_an_object_whatever_the_order_of_its_keys():
    """A value saved as {"id": 7, "name": "ada"} and read now as
    {"name": "ada", "id": 7} is the same value: no change."""
    from ctxlab.trace import changes

    def read(value):
        return {"request": 1, "op": "get", "var": "user", "file": "app.py", "function": "f", "value": value}

    before = {"findings": [], "events": [read({"id": 7, "name": "ada"})]}
    after = {"findings": [], "events": [read({"name": "ada", "id": 7})]}
    assert changes(before, after) == []
    after["events"][0]["value"] = {"name": "bob", "id": 7}
    assert [(c.before, c.after) for c in changes(before, after)] == [
        ({"id": 7, "name": "ada"}, {"name": "bob", "id": 7})
    ]
