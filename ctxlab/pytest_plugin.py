"""The pytest plugin: `pytest --ctxlab` fails a test whose requests lose or
leak a ContextVar value; the `ctxlab_trace` fixture gives what was recorded.

Inactive unless asked for: without `--ctxlab` (or the fixture) nothing is
hooked.  Requests are those a test sends to an ASGI app through Starlette's
`TestClient` or `httpx.ASGITransport`, numbered from 1 in each test; work
with no request of its own (a pool thread, the TestClient's portal thread)
belongs to the request in flight.
"""

from __future__ import annotations

import asyncio
import io
import weakref
from pathlib import Path
from typing import Any, Iterator

import pytest

from ctxlab.probe import _request_number
from ctxlab.trace import SentRequest, TraceResult, result_of
from ctxlab.tracer import Tracer, TraceRecorder

_RECORDING = pytest.StashKey["Recording"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ctxlab")
    group.addoption("--ctxlab", action="store_true", default=False,
                    help="Fail tests whose requests lose or leak a ContextVar value (ctxlab trace).")  # fmt: skip


class Recording:
    """What one test's requests did: events, findings, as `ctxlab trace`
    reports them.  The `ctxlab_trace` fixture is one of these."""

    def __init__(self, tracer: Tracer, name: str, app_dir: Path) -> None:
        self.tracer, self.name, self.app_dir = tracer, name, app_dir
        self.requests: list[SentRequest] = []
        self.loops: weakref.WeakSet = weakref.WeakSet()
        tracer.attach(TraceRecorder())

    def result(self) -> TraceResult:
        """Everything recorded so far, labelled and analysed."""
        return result_of(self.tracer, self.name, "test client", list(self.requests), self.app_dir)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every get, set and reset so far, as `ctxlab trace --json` gives them."""
        result = self.result()
        return [result.event_json(e) for e in result.events]

    @property
    def findings(self) -> list[dict[str, Any]]:
        """The lost, leak and reset-error findings so far."""
        result = self.result()
        return [result.finding_json(f) for f in result.findings]

    def values(self, var: str, op: str = "get") -> list[Any]:
        """The values `var` had at each `op` made during a request."""
        return [e["value"] for e in self.events if e["var"] == var and e["op"] == op and e["request"] is not None]

    # -- request tracking ----------------------------------------------------------
    def begin(self, method: str, path: str) -> tuple[SentRequest, Any]:
        request = SentRequest(len(self.requests) + 1, method, path, None)
        self.requests.append(request)
        self.tracer.recorder.in_flight.add(request.request)
        return request, _request_number.set(request.request)

    def end(self, request: SentRequest, token: Any, status: int | None) -> None:
        request.status = status
        self.tracer.recorder.in_flight.discard(request.request)
        _request_number.reset(token)

    def track(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give a loop the recorder's task factory (it had none), so tasks
        have parents and origins; taken back when the test ends."""
        if loop.get_task_factory() is None:
            loop.set_task_factory(self.tracer.recorder.task_factory)
            self.loops.add(loop)

    def close(self) -> None:
        for loop in list(self.loops):
            if loop.get_task_factory() == self.tracer.recorder.task_factory:
                loop.set_task_factory(None)


def _patches(recording: Recording, monkeypatch: pytest.MonkeyPatch) -> None:
    """Number the requests test clients send; give their loops the factory."""
    import httpx

    asgi_send = httpx.ASGITransport.handle_async_request

    async def handle_async_request(self, request):
        recording.track(asyncio.get_running_loop())
        sent, token = recording.begin(request.method, request.url.path)
        response = None
        try:
            response = await asgi_send(self, request)
            return response
        finally:
            recording.end(sent, token, response.status_code if response is not None else None)

    monkeypatch.setattr(httpx.ASGITransport, "handle_async_request", handle_async_request)
    for loop_class in _loop_classes():
        monkeypatch.setattr(loop_class, "create_task", _tracking(loop_class.create_task, recording))
    try:
        from starlette.testclient import _TestClientTransport
    except ImportError:  # no Starlette: httpx alone
        return
    testclient_send = _TestClientTransport.handle_request

    def handle_request(self, request):
        sent, token = recording.begin(request.method, request.url.path)
        response = None
        try:
            response = testclient_send(self, request)
            return response
        finally:
            recording.end(sent, token, response.status_code if response is not None else None)

    monkeypatch.setattr(_TestClientTransport, "handle_request", handle_request)


def _loop_classes() -> list[type]:
    """asyncio's loops and, when installed, uvloop's (a Python subclass of
    its compiled loop, so its `create_task` can be wrapped too)."""
    classes: list[type] = [asyncio.BaseEventLoop]
    try:
        import uvloop
    except ImportError:
        return classes
    return [*classes, uvloop.Loop]


def _tracking(create_task: Any, recording: Recording) -> Any:
    def create_task_tracked(self, coro, **kwargs):
        recording.track(self)
        return create_task(self, coro, **kwargs)

    return create_task_tracked


class _Session:
    """One tracer for the whole session: call sites it has found not to be
    ContextVar methods stay switched off from one test to the next."""

    tracer: Tracer | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    if item.config.getoption("ctxlab") or "ctxlab_trace" in getattr(item, "fixturenames", ()):
        _start(item)
    yield


def _start(item: pytest.Item) -> None:
    if _Session.tracer is None:
        _Session.tracer = Tracer(TraceRecorder())
        _Session.tracer.start()
    monkeypatch = pytest.MonkeyPatch()
    recording = Recording(_Session.tracer, item.nodeid, item.config.rootpath)
    _patches(recording, monkeypatch)
    item.stash[_RECORDING] = recording
    item.stash[_MONKEYPATCH] = monkeypatch


_MONKEYPATCH = pytest.StashKey[pytest.MonkeyPatch]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    recording = item.stash.get(_RECORDING, None)
    if recording is None or not item.config.getoption("ctxlab") or outcome.excinfo is not None:
        return
    result = recording.result()
    if result.findings:
        outcome.force_exception(pytest.fail.Exception(_describe(result), pytrace=False))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    recording = item.stash.get(_RECORDING, None)
    if recording is not None:
        recording.close()
        item.stash[_MONKEYPATCH].undo()
        del item.stash[_RECORDING]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _Session.tracer is not None:
        _Session.tracer.stop()
        _Session.tracer = None


def _describe(result: TraceResult) -> str:
    """The findings as `ctxlab trace` prints them, in plain text."""
    from rich.console import Console

    from ctxlab import render

    out = io.StringIO()
    # No wrapping: pytest's report is read in CI logs, where a finding's
    # file:line cut across two lines can no longer be searched or clicked.
    # Never a terminal, even with FORCE_COLOR set (as CI often has it):
    # pytest puts this text in its report as it is, styles as escape codes.
    console = Console(file=out, force_terminal=False, soft_wrap=True)
    console.print(f"ctxlab: {len(result.findings)} finding(s) in this test's requests")
    for finding in result.findings:
        console.print(render.trace_finding(result, finding))
    return out.getvalue().rstrip()


@pytest.fixture
def ctxlab_trace(request: pytest.FixtureRequest) -> Recording:
    """What this test's requests did with ContextVars: `.events`,
    `.findings` (as `ctxlab trace --json` gives them), `.values(var)`."""
    return request.node.stash[_RECORDING]
