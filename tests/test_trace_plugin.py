"""`pytest --ctxlab` on a test suite of its own: it fails exactly the tests
whose requests lose or leak a value."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).parent / "fixtures"
# Python 3.14's thread_inherit_context: a pool thread starts in a copy of
# the context that started it, so trace_log's pool job logs the request's
# trace id (the suite's own assertion checks what the app logged).
INHERITS = bool(getattr(sys.flags, "thread_inherit_context", 0))

SUITE = """
import sys

import httpx
import pytest
from starlette.testclient import TestClient

from trace_apps import audit, clean, executor_leak, sync_dependency, trace_log


def test_audit_loses_the_user():
    assert TestClient(audit.app).get("/users/1").status_code == 200
    assert audit.seen[-1] is None  # the app itself saw it lost


def test_clean_app():
    with TestClient(clean.app) as client:
        assert client.get("/").status_code == 200


def test_sync_dependency_value_is_lost():
    assert TestClient(sync_dependency.app).get("/").json() == {"user": "anonymous"}


@pytest.mark.anyio
async def test_executor_job_leaks_into_the_next_request():
    transport = httpx.ASGITransport(app=executor_leak.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get("/")
        await client.get("/")
    assert executor_leak.seen[-1] == "tenant-1"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_fixture_gives_events_and_findings(ctxlab_trace):
    TestClient(clean.app).get("/")
    TestClient(clean.app).get("/")
    assert ctxlab_trace.findings == []
    sets = ctxlab_trace.values("correlation_id", "set")
    assert len(sets) == 2 and sets[0] != sets[1]
    assert set(ctxlab_trace.values("correlation_id")) == set(sets)  # every read saw its own request's id


def test_no_log_line_in_a_request_says_no_trace(ctxlab_trace):
    TestClient(trace_log.app).get("/", headers={"x-trace-id": "abc"})
    inherits = bool(getattr(sys.flags, "thread_inherit_context", 0))
    assert ("[no-trace] in a pool job" in trace_log.lines) != inherits  # what the app itself logged
    assert "<unset>" not in ctxlab_trace.values("trace_id")
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    # The apps sit deep, as in a CI checkout: their paths are longer than a
    # line, and a finding's file:line must still come whole.
    deep = pytester.path.joinpath(*["a-long-directory-name"] * 6)
    shutil.copytree(FIXTURES / "trace_apps", deep / "trace_apps")
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(deep)!r})\n")
    pytester.makepyfile(test_app=SUITE)
    return pytester


def test_fails_exactly_the_tests_that_lose_or_leak(suite):
    result = suite.runpytest_subprocess("--ctxlab", "-p", "anyio")
    losing = {
        "test_audit_loses_the_user",
        "test_sync_dependency_value_is_lost",
        "test_executor_job_leaks_into_the_next_request",
    }
    if not INHERITS:  # the pool job's log line lost the trace id
        losing.add("test_no_log_line_in_a_request_says_no_trace")
    result.assert_outcomes(passed=6 - len(losing), failed=len(losing))
    failed = {line.split("::")[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED")}
    assert failed == losing
    out = result.stdout.str()
    assert "LOST user" in out and "BaseHTTPMiddleware's call_next" in out
    assert "LEAK tenant  in request 2" in out
    assert re.search(r"\n  set +\S+/executor_leak\.py:\d+ in job \(request 1, thread ", out), out


def test_on_uvloop_too(suite):
    """The same suite with every loop a uvloop one (TestClient's portal and
    anyio's runner): the same tests fail, and the boundaries still name the
    code that created each task (uvloop's loop gets the task factory too)."""
    pytest.importorskip("uvloop")
    on_uvloop = (
        re.sub(r"TestClient\((\w+)\.app\)", r'TestClient(\1.app, backend_options={"use_uvloop": True})', SUITE)
        .replace('return "asyncio"', 'return ("asyncio", {"use_uvloop": True})')
        .replace("    assert executor_leak.seen[-1]", "    assert type(asyncio.get_running_loop()).__module__.startswith('uvloop')\n"
                 "    assert executor_leak.seen[-1]")
        .replace("import httpx", "import asyncio\n\nimport httpx", 1)
    )  # fmt: skip
    assert on_uvloop.count("use_uvloop") == SUITE.count("TestClient(") + 1  # every client, and anyio
    suite.makepyfile(test_app=on_uvloop)
    result = suite.runpytest_subprocess("--ctxlab", "-p", "anyio")
    result.assert_outcomes(passed=3 if INHERITS else 2, failed=3 if INHERITS else 4)
    out = result.stdout.str()
    assert "BaseHTTPMiddleware's call_next" in out and "ctxlab explain dependency-audit" in out
    assert "LEAK tenant  in request 2" in out


def test_inactive_without_the_option(suite):
    """Only the fixture's own assertion fails: the seed 002 check, one line
    (where the pool job lost the trace id)."""
    result = suite.runpytest_subprocess("-p", "anyio")
    result.assert_outcomes(passed=6 if INHERITS else 5, failed=0 if INHERITS else 1)
    assert ('assert "<unset>" not in' in result.stdout.str()) != INHERITS


ALONGSIDE = """
import asyncio

import httpx
import pytest
from starlette.testclient import TestClient

from trace_apps import audit


async def broken(scope, receive, send):
    raise RuntimeError("broken on purpose")


def test_the_fixture_alone_never_fails_a_test(ctxlab_trace):
    assert TestClient(audit.app).get("/users/1").status_code == 200
    assert [f["kind"] for f in ctxlab_trace.findings] == ["lost"]
    with pytest.raises(RuntimeError):
        TestClient(broken).get("/")
    assert [r.status for r in ctxlab_trace.result().requests] == [200, None]


def test_fails_on_its_own():
    TestClient(audit.app).get("/users/1")
    assert 1 == 2, "the test's own failure"


LOOP = asyncio.new_event_loop()  # a loop that outlives the test that used it


async def _through_httpx():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=audit.app), base_url="http://t") as client:
        await client.get("/users/1")
        with pytest.raises(RuntimeError):
            await httpx.AsyncClient(transport=httpx.ASGITransport(app=broken), base_url="http://t").get("/")


def test_a_loop_of_the_tests_own(ctxlab_trace):
    LOOP.run_until_complete(_through_httpx())
    assert [r.status for r in ctxlab_trace.result().requests] == [200, None]
    assert LOOP.get_task_factory() is not None  # ctxlab's, while the test runs


def test_the_loop_is_given_back():
    assert LOOP.get_task_factory() is None
"""


@pytest.mark.parametrize("option", [False, True])
def test_a_tests_own_failure_and_its_loops_are_its_own(suite, option):
    """Without --ctxlab the fixture records and never fails a test; with it,
    a test that failed on its own keeps its own failure; a request that
    raised has no status; and a loop the test made gets its task factory
    back when the test ends."""
    suite.makepyfile(test_app=ALONGSIDE)
    result = suite.runpytest_subprocess(*["--ctxlab"] * option)
    failed = {line.split("::")[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED")}
    with_findings = {"test_the_fixture_alone_never_fails_a_test", "test_a_loop_of_the_tests_own"}
    assert failed == {"test_fails_on_its_own"} | (with_findings if option else set())
    (own,) = [line for line in result.outlines if line.startswith("FAILED test_app.py::test_fails_on_its_own")]
    assert own.startswith("FAILED test_app.py::test_fails_on_its_own - AssertionError: the test")
    result.assert_outcomes(passed=4 - len(failed), failed=len(failed))


def test_report_is_plain_text_even_with_force_color(suite, monkeypatch):
    """CI often sets FORCE_COLOR: the findings go into pytest's report as text."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    result = suite.runpytest_subprocess("--ctxlab", "-p", "anyio", "-k", "audit", "--color=no")
    result.assert_outcomes(failed=1, deselected=5)
    out = result.stdout.str()
    assert "\x1b[" not in out and "LOST user  in request 1" in out


def test_without_starlettes_test_client_or_uvloop(suite):
    """httpx alone: a suite with neither Starlette's TestClient nor uvloop to import."""
    conftest = suite.path / "conftest.py"
    conftest.write_text(conftest.read_text() + "\nsys.modules['starlette.testclient'] = sys.modules['uvloop'] = None\n")
    suite.makepyfile(test_app=SUITE.replace("from starlette.testclient import TestClient\n", ""))
    result = suite.runpytest_subprocess("--ctxlab", "-p", "anyio", "-k", "executor_job")
    result.assert_outcomes(failed=1, deselected=5)
    assert "LEAK tenant  in request 2" in result.stdout.str()


def test_a_value_whose_repr_raises_changes_nothing_the_test_sees(pytester: pytest.Pytester):
    """odd_values' endpoint sets a value whose repr raises and reads it back;
    traced, the request failed and so did a passing test."""
    shutil.copytree(FIXTURES / "trace_apps", pytester.path / "trace_apps")
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(pytester.path)!r})\n")
    pytester.makepyfile(
        test_refuses="""
from starlette.testclient import TestClient

from trace_apps import odd_values


def test_the_app_reads_back_what_it_set():
    assert TestClient(odd_values.app).get("/?kind=refuses").text == "same"
"""
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # the test holds without ctxlab
    pytester.runpytest_subprocess("--ctxlab").assert_outcomes(passed=1)
