"""The runner on every path a request can take: in process, through a real
uvicorn, pipelined on one connection."""

import asyncio
import logging

import pytest

from ctxlab.config import RunConfig
from ctxlab.probe import note
from ctxlab.runner import run
from ctxlab.scenario import ClientRequest, Scenario

SERVERS = ["asgi", "uvicorn"]


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


class TestUnexpectedStatus:
    """An answer other than the one the scenario declares breaks the run, on every path."""

    async def app(self, scope, receive, send):
        if scope["type"] == "http":
            await answer(send, 404, b"no such page")

    @pytest.mark.parametrize("server", SERVERS)
    def test_sequential(self, server):
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
        assert result.error.startswith("ServerFailed: uvicorn did not start: ")
        assert "no database" in result.error

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
        with pytest.raises(ServerFailed, match="uvicorn did not start: "):
            asyncio.run(start_on(busy.getsockname()[1]))


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

    def test_uvicorn_listens_on_an_ephemeral_port(self):
        from pathlib import Path

        from ctxlab.servers import uvicorn_server

        async def app(scope, receive, send):
            pass

        async def port_of_a_server():
            async with uvicorn_server(app, lifespan=False, options={}, timeout=1) as url:
                return int(url.rsplit(":", 1)[1])

        ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
        low, high = map(int, ranges.read_text().split()) if ranges.exists() else (1024, 65535)
        assert low <= asyncio.run(port_of_a_server()) <= high

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
