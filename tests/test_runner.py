"""The runner on every path a request can take: in process, through a real
uvicorn, pipelined on one connection."""

import asyncio
import logging
import re

import pytest

from ctxlab.config import RunConfig
from ctxlab.probe import note
from ctxlab.runner import run
from ctxlab.scenario import ClientRequest, Scenario

SERVERS = ["asgi", "uvicorn"]
EVERY_SERVER = ["asgi", "uvicorn", "hypercorn", "granian"]


def installed_or_skip(server):
    if server != "asgi":
        pytest.importorskip(server)


async def answer(send, status=200, body=b"ok"):
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def scenario(app, expect=None, **options):
    return Scenario(name="test", summary="", build=lambda: app, expect=expect or {}, **options)


def lifespan_app(on_request):
    """A pure ASGI app whose startup puts a value in the lifespan state."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["from_startup"] = "pool"
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await on_request(scope)
        await answer(send)

    return app


class TestLifespanState:
    """Each request gets its own copy of the lifespan state, as uvicorn gives it."""

    @pytest.mark.parametrize("server", SERVERS)
    def test_a_request_never_sees_what_an_earlier_one_stored(self, server):
        async def on_request(scope):
            note("request", "state", dict(scope["state"]))
            scope["state"]["stored"] = "by an earlier request"

        app = lifespan_app(on_request)
        result = run(scenario(app, lifespan=True, requests=(ClientRequest(),) * 3), RunConfig(server))
        assert result.error is None
        assert [r.value for r in result.records] == [{"from_startup": "pool"}] * 3


@pytest.mark.parametrize("server", EVERY_SERVER[1:])
@pytest.mark.parametrize("lifespan", [True, False])
def test_a_real_server_runs_the_lifespan_when_asked(server, lifespan):
    """What the app is sent: the lifespan protocol around the requests when
    the scenario asks for it; never otherwise, except on hypercorn, which
    always runs it (its worker_serve starts the lifespan unconditionally)."""
    installed_or_skip(server)
    sent = []

    async def app(scope, receive, send):
        sent.append(scope["type"])
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        else:
            await answer(send)

    result = run(scenario(app, lifespan=lifespan), RunConfig(server))
    with_lifespan = lifespan or server == "hypercorn"
    assert (result.error, sent) == (None, ["lifespan", "http"] if with_lifespan else ["http"])


def test_granian_prints_nothing(capfd):
    """granian logs to stdout when its log is enabled: that would break
    `--json` on stdout."""
    installed_or_skip("granian")

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await answer(send)

    result = run(scenario(app), RunConfig("granian"))
    assert (result.error, capfd.readouterr()) == (None, ("", ""))


class TestUnexpectedStatus:
    """An answer other than the one the scenario declares breaks the run, on every path."""

    async def app(self, scope, receive, send):
        if scope["type"] == "http":
            await answer(send, 404, b"no such page")

    @pytest.mark.parametrize("server", EVERY_SERVER)
    def test_sequential(self, server):
        installed_or_skip(server)
        result = run(scenario(self.app, requests=(ClientRequest(path="/missing"),)), RunConfig(server))
        assert result.error == "UnexpectedResponse: request 1 (GET /missing) answered 404, expected 200: no such page"

    def test_pipelined(self):
        requests = (ClientRequest(status=404), ClientRequest(path="/two"))
        result = run(scenario(self.app, requests=requests, pipelined=True), RunConfig("uvicorn"))
        assert result.error == "UnexpectedResponse: request 2 (GET /two) answered 404, expected 200"

    @pytest.mark.parametrize("server", SERVERS)
    def test_the_declared_status_passes(self, server):
        result = run(scenario(self.app, requests=(ClientRequest(status=404),) * 2, pipelined=True), RunConfig(server))
        assert result.error is None

    @pytest.mark.parametrize("server", SERVERS)
    def test_an_expected_500_from_an_app_that_raises(self, server):
        from starlette.applications import Starlette
        from starlette.routing import Route

        async def boom(request):
            raise RuntimeError("boom")

        app = Starlette(routes=[Route("/", boom)])
        assert run(scenario(app, requests=(ClientRequest(status=500),)), RunConfig(server)).error is None
        crashed = run(scenario(app), RunConfig(server)).error
        # In process the exception itself arrives; a server answers 500.
        assert crashed == (
            "RuntimeError: boom"
            if server == "asgi"
            else "UnexpectedResponse: request 1 (GET /) answered 500, expected 200: Internal Server Error"
        )

    def test_sys_exit_in_a_request_crashes_the_scenario_not_ctxlab(self):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                raise SystemExit(4)

        assert run(scenario(app), RunConfig()).error == "SystemExit: 4"


class TestOrder:
    """Records come in request order, even when the app works on after answering."""

    @pytest.mark.parametrize("server", SERVERS)
    def test_work_after_the_response_belongs_to_its_request(self, server):
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            note("before", "answer", True)
            await answer(send)
            await asyncio.sleep(0.02)  # a background task, after the answer
            note("after", "answer", True)

        result = run(scenario(app, requests=(ClientRequest(),) * 3), RunConfig(server))
        assert result.error is None
        assert [(r.seq, r.request, r.probe) for r in result.records] == [
            (seq, (seq + 1) // 2, "after" if seq % 2 == 0 else "before") for seq in range(1, 7)
        ]

    @pytest.mark.parametrize("server", SERVERS)
    def test_concurrent_requests_are_all_in_flight_at_once(self, server):
        arrived, everyone = [], asyncio.Event()

        async def app(scope, receive, send):
            if scope["type"] == "http":
                arrived.append(scope["path"])
                if len(arrived) == 3:
                    everyone.set()
                await everyone.wait()  # one after another, this would wait forever
                await answer(send)

        result = run(scenario(app, concurrent=True, requests=(ClientRequest(),) * 3, timeout=5), RunConfig(server))
        assert (result.error, len(arrived)) == (None, 3)

    def test_concurrent_requests_each_in_a_task_of_their_own(self):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                note("in", "task", id(asyncio.current_task()))
                await answer(send)

        result = run(scenario(app, concurrent=True, requests=(ClientRequest(),) * 4), RunConfig())
        assert sorted(r.request for r in result.records) == [1, 2, 3, 4]
        assert len({r.value for r in result.records}) == 4


class TestFailures:
    """A crash or a hang is the run's error; the records made before it are kept."""

    def test_a_crash_while_building(self):
        def build():
            raise ValueError("no app")

        result = run(Scenario(name="t", summary="", build=build, expect={}), RunConfig())
        assert result.error == "ValueError: no app" and result.duration_ms > 0
        assert (result.records, result.onion) == ([], [])

    def test_a_hang_times_out(self):
        async def app(scope, receive, send):
            note("before", "hang", 1)
            await asyncio.Event().wait()

        result = run(scenario(app, timeout=1.5), RunConfig())
        assert result.error == "timed out after 1.5s"
        assert [r.probe for r in result.records] == ["before"]
        assert 1500 <= result.duration_ms < 60_000  # milliseconds of wall time: at least the timeout

    def test_what_the_app_left_running_is_cancelled_and_cleans_up(self):
        cleaned = []

        async def forever():
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0.01)  # cleanup that itself takes a moment
                cleaned.append(True)

        async def app(scope, receive, send):
            if scope["type"] == "http":
                asyncio.get_running_loop().create_task(forever())
                await answer(send)

        assert run(scenario(app), RunConfig()).error is None
        assert cleaned == [True]

    def test_a_worker_thread_job_still_running_is_waited_for(self):
        """The loop's default executor is shut down, its threads joined
        (for a moment at most), before the run returns."""
        import threading
        import time

        finished = []

        def job():
            time.sleep(0.2)
            finished.append(threading.current_thread().name)

        async def app(scope, receive, send):
            if scope["type"] == "http":
                asyncio.get_running_loop().run_in_executor(None, job)  # not awaited
                await answer(send)

        assert run(scenario(app), RunConfig()).error is None
        assert len(finished) == 1

    def test_a_run_outside_the_main_thread(self):
        """Ctrl-C handling needs the main thread; elsewhere a run goes on without it."""
        from concurrent.futures import ThreadPoolExecutor

        async def app(scope, receive, send):
            if scope["type"] == "http":
                note("endpoint", "ran", True)
                await answer(send)

        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(run, scenario(app), RunConfig()).result()
        assert (result.error, [r.value for r in result.records]) == (None, [True])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_scenario_runs_on_the_loop_asked_for(loop):
    pytest.importorskip(loop)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            note("endpoint", "loop", type(asyncio.get_running_loop()).__module__.partition(".")[0])
            await answer(send)

    result = run(scenario(app), RunConfig("asgi", loop))
    assert (result.error, [r.value for r in result.records]) == (None, [loop])


class TestLifespanFailures:
    """A lifespan that fails, or an app without one, breaks the run with the reason."""

    @staticmethod
    def failing_startup(scope, receive, send):
        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            await answer(send)

        return app

    def test_startup_failed_in_process(self):
        result = run(scenario(self.failing_startup(None, None, None), lifespan=True), RunConfig())
        assert result.error == "LifespanFailed: lifespan startup failed: no database"

    def test_startup_failed_on_uvicorn(self):
        result = run(scenario(self.failing_startup(None, None, None), lifespan=True), RunConfig("uvicorn"))
        assert result.error == "ServerFailed: uvicorn did not start: no database"

    def test_an_app_without_lifespan_support(self):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                await answer(send)

        result = run(scenario(app, lifespan=True), RunConfig())
        assert result.error == "LifespanFailed: the app returned during lifespan startup"

    def test_an_app_that_raises_in_its_lifespan(self):
        async def app(scope, receive, send):
            raise RuntimeError("lifespan crashed")

        error = run(scenario(app, lifespan=True), RunConfig()).error
        assert error == "LifespanFailed: lifespan startup failed: RuntimeError: lifespan crashed"

    def test_a_starlette_lifespan_that_raises_is_reported_once_by_its_last_line(self, caplog):
        """Starlette sends the whole traceback as the failure message, then
        re-raises in the lifespan task: the run names the exception, and
        asyncio never logs the task's exception as unretrieved."""
        import gc
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette

        @asynccontextmanager
        async def lifespan(app):
            raise RuntimeError("no database")
            yield

        # Only the error is kept: the run's task table would keep the task alive.
        error = run(scenario(Starlette(lifespan=lifespan), lifespan=True), RunConfig()).error
        gc.collect()  # asyncio logs an unretrieved exception when the task is collected
        assert error == "LifespanFailed: lifespan startup failed: RuntimeError: no database"
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []

    def test_shutdown_runs_after_the_requests(self):
        async def on_request(scope):
            note("request", "state", dict(scope["state"]))

        app = lifespan_app(on_request)

        async def logged(scope, receive, send):
            if scope["type"] == "lifespan":

                async def receive_logged():
                    message = await receive()
                    note("lifespan", "message", message["type"])
                    return message

                return await app(scope, receive_logged, send)
            return await app(scope, receive, send)

        for server in SERVERS:
            records = run(scenario(logged, lifespan=True), RunConfig(server)).records
            assert [r.value if r.probe == "lifespan" else r.probe for r in records] == [
                "lifespan.startup", "request", "lifespan.shutdown",
            ], server  # fmt: skip


class TestWhatTheAppSees:
    """The scope a request arrives with, in process."""

    @pytest.mark.parametrize(("asked", "seen"), [(None, None), ("2.4", "2.4")])
    def test_spec_version(self, asked, seen):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                note("scope", "spec_version", scope["asgi"].get("spec_version"))
                await answer(send)

        records = run(scenario(app), RunConfig(spec_version=asked)).records
        assert [r.value for r in records] == [seen]  # httpx.ASGITransport sends none of its own

    def test_requests_without_a_number_are_numbered_as_they_arrive(self):
        from ctxlab.probe import Recorder, activate
        from ctxlab.servers import attribute_requests

        async def app(scope, receive, send):
            note("arrived", "path", scope["path"])

        recorder = Recorder()
        previous = activate(recorder)
        try:
            wrapped = attribute_requests(app)
            for path, headers in [("/a", []), ("/b", [(b"x-ctxlab-request", b"7")]), ("/c", [])]:
                asyncio.run(wrapped({"type": "http", "path": path, "headers": headers}, None, None))
        finally:
            activate(previous)
        assert [(r.request, r.value) for r in recorder.records] == [(1, "/a"), (7, "/b"), (2, "/c")]
        assert recorder.in_flight == set()


def test_onion_names_decorated_middleware_by_function():
    from fastapi import FastAPI
    from starlette.middleware.base import BaseHTTPMiddleware

    from ctxlab.runner import onion

    class Timing(BaseHTTPMiddleware):
        pass

    class Pure:
        def __init__(self, app):
            self.app = app

    app = FastAPI()
    app.add_middleware(Timing)
    app.add_middleware(Pure)

    @app.middleware("http")
    async def add_header(request, call_next):
        return await call_next(request)

    assert onion(app) == ["http:add_header", "Pure", "Timing"]
    assert onion(lambda scope, receive, send: None) == []


def test_a_busy_port_is_a_clear_server_failure():
    import socket

    from ctxlab.errors import ServerFailed
    from ctxlab.servers import uvicorn_server

    async def app(scope, receive, send):
        pass

    async def start_on(port):
        async with uvicorn_server(app, lifespan=False, options={}, timeout=1, port=port):
            pass

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerFailed) as failed:
            asyncio.run(start_on(busy.getsockname()[1]))
    # uvicorn's own words, on one line: "[Errno 98] error while attempting to bind on address ..."
    assert re.fullmatch(r"uvicorn did not start: \[Errno \d+\] error while attempting to bind on .*", str(failed.value))


class TestServerEdges:
    """What the transports report when the app or the server does something unusual."""

    def test_a_crash_closes_a_pipelined_connection(self):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                if scope["path"] == "/crash":
                    raise RuntimeError("boom")
                await answer(send)

        requests = (ClientRequest(path="/crash", status=500), ClientRequest())
        result = run(scenario(app, requests=requests, pipelined=True), RunConfig("uvicorn"))
        # uvicorn answers 500 and closes the connection: request 2 is never read.
        assert result.error == "ServerFailed: the server closed the connection mid-pipeline"

    def test_a_long_unexpected_answer_is_cut(self):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                await answer(send, 404, b"x" * 300)

        error = run(scenario(app), RunConfig()).error
        assert error == "UnexpectedResponse: request 1 (GET /) answered 404, expected 200: " + "x" * 200

    @pytest.mark.parametrize("server", SERVERS)
    def test_a_failed_shutdown(self, server):
        # uvicorn itself logs "Application shutdown failed. Exiting." and exits 0:
        # ctxlab reports it on every server, as in process.
        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    else:
                        await send({"type": "lifespan.shutdown.failed", "message": "pool leaked"})
                        return
            else:
                note("request", "served", True)
                await answer(send)

        result = run(scenario(app, lifespan=True), RunConfig(server))
        assert [r.value for r in result.records] == [True]
        assert result.error == "LifespanFailed: lifespan shutdown failed: pool leaked"

    @pytest.mark.parametrize("server", SERVERS)
    def test_an_app_raising_at_shutdown(self, server):
        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
                raise ValueError("boom")
            await answer(send)

        result = run(scenario(app, lifespan=True), RunConfig(server))
        assert result.error == "LifespanFailed: lifespan shutdown failed: ValueError: boom"

    @pytest.mark.parametrize("server", SERVERS)
    def test_a_starlette_lifespan_raising_at_shutdown(self, server):
        import contextlib

        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            raise OSError("pool leaked")

        async def endpoint(request):
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)
        result = run(scenario(app, lifespan=True), RunConfig(server))
        assert result.error == "LifespanFailed: lifespan shutdown failed: OSError: pool leaked"

    def test_every_pipelined_request_is_sent(self):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                note("served", "path", scope["path"])
                await answer(send)

        requests = tuple(ClientRequest(path=f"/{n}") for n in range(1, 4))
        result = run(scenario(app, requests=requests, pipelined=True), RunConfig("uvicorn"))
        assert (result.error, [(r.request, r.value) for r in result.records]) == (
            None,
            [(1, "/1"), (2, "/2"), (3, "/3")],
        )

    @pytest.mark.parametrize("server", ["uvicorn", "hypercorn", "granian"])
    def test_each_real_server_listens_on_an_ephemeral_port(self, server):
        """The port the app is told it is served on (scope["server"]) is
        the one we reach it on, and one the OS hands out for port 0."""
        from pathlib import Path

        import httpx

        from ctxlab.servers import real_server

        pytest.importorskip(server)
        told = []

        async def app(scope, receive, send):
            if scope["type"] == "http":
                told.append(scope["server"])
                await answer(send)

        async def port_we_reached():
            async with real_server(app, RunConfig(server), lifespan=False, options={}, timeout=5) as url:
                async with httpx.AsyncClient(base_url=url) as client:
                    assert (await client.get("/")).text == "ok"
                return int(url.rsplit(":", 1)[1])

        port = asyncio.run(port_we_reached())
        ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
        low, high = map(int, ranges.read_text().split()) if ranges.exists() else (1024, 65535)
        # granian gives the port as a string (the ASGI spec says int).
        assert [(host, int(number)) for host, number in told] == [("127.0.0.1", port)] and low <= port <= high

    def test_waiting_for_a_server_that_listens_late(self):
        """granian binds its port from Rust threads: we wait until something
        listens there (a socket of ours, listening 0.1 s late, has the
        connection in its backlog), or give up after the timeout."""
        import socket
        import time

        from ctxlab.errors import ServerFailed
        from ctxlab.servers import _until_listening

        async def late_then_never():
            with socket.socket() as late, socket.socket() as never:
                late.bind(("127.0.0.1", 0))
                never.bind(("127.0.0.1", 0))
                asyncio.get_running_loop().call_later(0.1, late.listen)
                await _until_listening(late.getsockname()[1], timeout=30)
                late.setblocking(False)
                late.accept()[0].close()  # raises BlockingIOError if nobody connected
                started = time.monotonic()
                with pytest.raises(ServerFailed) as failed:
                    await _until_listening(never.getsockname()[1], timeout=0.2)
                return str(failed.value), never.getsockname()[1], time.monotonic() - started

        message, port, waited = asyncio.run(late_then_never())
        assert message == f"nothing listens on port {port} after 0.2s" and waited >= 0.2

    def test_concurrent_requests_finish_their_work_before_the_server_stops(self):
        """Concurrent requests are not waited for one by one: stopping the
        server gives work after each answer its time."""

        async def app(scope, receive, send):
            if scope["type"] == "http":
                await answer(send)
                await asyncio.sleep(0.05)  # a background task, after the answer
                note("after", "answer", True)

        result = run(scenario(app, concurrent=True, requests=(ClientRequest(),) * 3), RunConfig("uvicorn"))
        assert (result.error, sorted(r.request for r in result.records)) == (None, [1, 2, 3])

    def test_uvicorn_logs_nothing_into_the_users_logging(self, caplog):
        """ctxlab runs inside other programs (the pytest plugin, a user's CI):
        uvicorn's access log and its tracebacks stay out of their logging."""

        async def app(scope, receive, send):
            if scope["type"] == "http":
                if scope["path"] == "/crash":
                    raise RuntimeError("boom")
                await answer(send)

        requests = (ClientRequest(), ClientRequest(path="/crash", status=500))
        with caplog.at_level(logging.DEBUG):
            result = run(scenario(app, requests=requests), RunConfig("uvicorn"))
        assert result.error is None
        assert [r.name for r in caplog.records if r.name.startswith("uvicorn")] == []


def test_ctrl_c_in_process_cancels_the_scenario_and_lets_it_clean_up():
    """In the main thread with Python's own Ctrl-C handler (the pytest
    plugin's case), Ctrl-C cancels the scenario's task: the app sees
    CancelledError where it waits, then the run raises KeyboardInterrupt."""
    import os
    import signal

    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            try:
                os.kill(os.getpid(), signal.SIGINT)
                await asyncio.sleep(30)
            except BaseException as exc:
                seen.append(type(exc).__name__)
                raise

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the suite's shell did
    try:
        with pytest.raises(KeyboardInterrupt):
            run(scenario(app, timeout=60))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == ["CancelledError"]
