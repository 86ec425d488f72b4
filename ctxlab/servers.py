"""How requests reach a scenario app: in-process, or a real uvicorn.

Every request carries its number in a header; the outermost layer turns it
into the recorder's request attribution, so the app itself is untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import socket
import ssl
import sys
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, AsyncIterator, Mapping

import httpx

from ctxlab.config import RunConfig
from ctxlab.errors import LifespanFailed, ServerFailed, UnexpectedResponse, described
from ctxlab.probe import end_request, start_request

REQUEST_HEADER = "x-ctxlab-request"


def attribute_requests(app, spec_version: str | None = None, state: dict | None = None):
    """Wrap `app` so probes know which request they belong to.

    `state` is the lifespan state, copied into each request as servers do.
    """
    header = REQUEST_HEADER.encode()
    arrivals = itertools.count(1)  # for requests that do not say (curl)

    async def outermost(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(header)
        number = int(given) if given else next(arrivals)
        if spec_version is not None:
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": spec_version}}
        if state is not None:
            scope = {**scope, "state": dict(state)}
        token = start_request(number)
        try:
            await app(scope, receive, send)
        finally:
            end_request(number, token)

    return outermost


@asynccontextmanager
async def asgi_client(app) -> AsyncIterator[httpx.AsyncClient]:
    """httpx.ASGITransport: the app runs inline in whichever task sends."""
    _sniffio_known_absent()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@cache
def _sniffio_known_absent() -> None:
    """Where sniffio is not installed (anyio 4 no longer needs it), make
    importing it fail at once, as it fails anyway.  httpx.ASGITransport
    (and httpcore, on a real server) asks whether trio is running by
    importing sniffio on every request,
    and a failed import searches every directory of sys.path again: a
    quarter of a small request's time here (~80 µs of ~350).  A None in
    sys.modules raises the same ModuleNotFoundError at once, and
    importlib.util.find_spec still answers None; a scenario sees nothing
    else change."""
    import importlib.util

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


@asynccontextmanager
async def server_client(base_url: str, timeout: float | None) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a server of ours on 127.0.0.1, over plain HTTP, with
    `timeout` (the scenario's: httpx's own 5 s turned a slow, loaded machine
    into errors)."""
    _sniffio_known_absent()  # httpcore imports it on every request too
    async with httpx.AsyncClient(base_url=base_url, verify=_plain_http(), timeout=timeout) as client:
        yield client


@cache
def _plain_http() -> ssl.SSLContext:
    # httpx's default builds an SSL context and loads the CA bundle for every
    # client (20 ms or more, most of a scenario on a server), though plain
    # HTTP never uses it: share one, with no CA loaded, which would refuse
    # any TLS peer rather than trust it.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@asynccontextmanager
async def lifespan(app) -> AsyncIterator[dict[str, Any]]:
    """Run the app's lifespan around the requests, in a task of its own with
    a fresh context, as uvicorn does; yield the lifespan state."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    loop = asyncio.get_running_loop()
    main = contextvars.Context().run(loop.create_task, app(scope, inbox.get, outbox.put))
    # A failed startup is reported from its lifespan.startup.failed message;
    # the same exception left in the task would be logged a second time.
    main.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def step(message: str) -> None:
        await inbox.put({"type": f"lifespan.{message}"})
        answer = loop.create_task(outbox.get())
        await asyncio.wait({main, answer}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            raised = main.exception()  # a Ctrl-C cancelling `main` still raises here
            if raised is not None:
                raise LifespanFailed(f"lifespan {message} failed: {described(raised)}")
            raise LifespanFailed(f"the app returned during lifespan {message}")
        if answer.result()["type"] != f"lifespan.{message}.complete":
            raise LifespanFailed(f"lifespan {message} failed: {_last_line(answer.result().get('message', ''))}")

    await step("startup")
    try:
        yield state
    finally:
        await step("shutdown")
        await main


async def send(client: httpx.AsyncClient, request, number: int) -> httpx.Response | None:
    headers = {**request.headers, REQUEST_HEADER: str(number)}
    try:
        response = await client.request(request.method, request.path, headers=headers, content=request.body)
    except Exception:
        if request.status == 500:
            # In process, an app that answered 500 and re-raised (as
            # Starlette's ServerErrorMiddleware does) reaches us as the
            # exception; a server would log it.  Expected here.
            return None
        raise
    if response.status_code != request.status:
        raise UnexpectedResponse(
            f"request {number} ({request.method} {request.path}) answered {response.status_code},"
            f" expected {request.status}: {response.text[:200]}"
        )
    return response


@asynccontextmanager
async def uvicorn_server(
    app, *, lifespan: bool, options: dict[str, Any], timeout: float, port: int = 0, http: str = "h11"
) -> AsyncIterator[str]:
    """A real uvicorn on 127.0.0.1 (ephemeral port), on the running loop,
    parsing with `http` (h11 or httptools); yields its base URL.

    We drive `Server.startup()` ourselves instead of `serve()`: serve's
    loop polls every 100 ms and its shutdown always sleeps 100 ms, which
    would dominate a run.  Sockets, protocol, lifespan: all uvicorn's own.
    """
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, lifespan="on" if lifespan else "off",
        log_config=None, access_log=False, **options,
    )  # fmt: skip
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    errors = _Collect()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(errors)
    propagate, logger.propagate = logger.propagate, False  # its tracebacks are ours to report
    try:
        try:
            await server.startup()
        except SystemExit:  # uvicorn exits the process when it cannot bind
            server.started = False
        if not server.started:
            # Its log holds a failed lifespan's whole traceback: the reason is one line of it.
            raise ServerFailed(f"uvicorn did not start: {errors.reason(since=0)}")
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        except BaseException:
            await _stop(server, grace=0)  # failing or interrupted: no waiting
            raise
        before_shutdown = len(errors.records)
        await _stop(server, grace=timeout)
        if server.lifespan.should_exit:  # uvicorn logs the failure and exits 0; in process it is an error
            raise LifespanFailed(f"lifespan shutdown failed: {errors.reason(since=before_shutdown)}")
    finally:
        logger.removeHandler(errors)
        logger.propagate = propagate


async def _stop(server, grace: float) -> None:
    """What Server.shutdown does, minus its fixed sleeps.  Request tasks
    still running (a background task after the response) get `grace`
    seconds, then are cancelled."""
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()
    running = [task for task in server.server_state.tasks if not task.done()]
    if running:
        _, stuck = await asyncio.wait(running, timeout=grace) if grace else ((), running)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=1)
    if server.config.lifespan != "off":
        await server.lifespan.shutdown()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def reason(self, since: int) -> str:
        """Why uvicorn's lifespan failed, as the in-process run says it: the
        app's exception, or the message it sent with `*.failed`."""
        for record in self.records[since:]:
            if record.exc_info and record.exc_info[1] is not None:
                return described(record.exc_info[1])
            if not record.getMessage().startswith("Application shutdown failed"):
                return _last_line(record.getMessage())
        return "no reason given"


def _last_line(message: str) -> str:
    # Starlette sends the whole traceback; its last line says what failed.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


async def send_pipelined(base_url: str, requests, numbers) -> None:
    """Write every request on one connection before reading any answer."""
    import h11

    host, port = base_url.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for request, number in zip(requests, numbers):
            headers = {
                "host": host,
                REQUEST_HEADER: str(number),
                "content-length": len(request.body),
                **request.headers,
            }
            head = f"{request.method} {request.path} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            writer.write(head.encode() + b"\r\n" + request.body)
        await writer.drain()
        parser = h11.Connection(h11.CLIENT)
        for index, (request, number) in enumerate(zip(requests, numbers)):
            if index:
                # A server that answered `connection: close` (uvicorn after a 500)
                # will read none of the requests still in the pipe.
                if parser.their_state is not h11.DONE:
                    raise ServerFailed("the server closed the connection mid-pipeline")
                parser.start_next_cycle()
            # h11 parses a response only after "sending" its request.
            parser.send(h11.Request(method=request.method, target=request.path, headers=[("host", host)]))
            parser.send(h11.EndOfMessage())
            status = await _read_response(parser, reader)
            if status != request.status:
                raise UnexpectedResponse(
                    f"request {number} ({request.method} {request.path}) answered {status}, expected {request.status}"
                )
    finally:
        writer.close()


async def _read_response(parser, reader) -> int:
    import h11

    status = None
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status
        elif isinstance(event, h11.ConnectionClosed):
            raise ServerFailed("the server closed the connection mid-pipeline")


# -- the other real servers, and the event loop ---------------------------------
def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new loop of the kind named: asyncio's own or uvloop's."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _reserved_port() -> socket.socket:
    """A socket bound to a free port with SO_REUSEPORT and never listening:
    it keeps the port ours until a server that binds it the same way (as
    granian does) is listening, and never receives a connection itself."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


async def _until_listening(port: int, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise ServerFailed(f"nothing listens on port {port} after {timeout:g}s") from None
            await asyncio.sleep(0.002)  # refused at once: the server is still binding
        else:
            writer.close()
            return


@asynccontextmanager
async def hypercorn_server(app, *, lifespan: bool, timeout: float) -> AsyncIterator[str]:
    """A real hypercorn on 127.0.0.1 on the running loop; yields its base URL.

    We hand it a socket already listening, so requests can be sent at once
    (they wait in the backlog until hypercorn accepts).  hypercorn always
    runs the lifespan protocol; an app without one is served all the same.
    """
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config, Sockets
    from hypercorn.utils import wrap_app

    config = Config()
    config.accesslog = config.errorlog = None
    config.graceful_timeout = timeout
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(config.backlog)
    listener.setblocking(False)
    stop = asyncio.Event()
    serving = asyncio.get_running_loop().create_task(
        worker_serve(wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                     sockets=Sockets([], [listener], []), shutdown_trigger=stop.wait)
    )  # fmt: skip
    try:
        yield "http://127.0.0.1:%d" % listener.getsockname()[1]
    except BaseException:
        serving.cancel()
        raise
    finally:
        stop.set()
        try:
            await serving
        except asyncio.CancelledError:
            pass
        listener.close()


@asynccontextmanager
async def granian_server(app, *, lifespan: bool, timeout: float) -> AsyncIterator[str]:
    """A real granian on 127.0.0.1, its Python side on the running loop
    (granian's embedded server: Rust threads do the I/O and schedule each
    request's task onto this loop); yields its base URL."""
    from granian.constants import Interfaces
    from granian.server.embed import Server

    holder = _reserved_port()
    port = holder.getsockname()[1]
    interface = Interfaces.ASGI if lifespan else Interfaces.ASGINL  # ASGINL: no lifespan
    server = Server(app, address="127.0.0.1", port=port, interface=interface, log_enabled=False)
    serving = asyncio.get_running_loop().create_task(server.serve())
    try:
        await _until_listening(port, timeout)
        holder.close()
        yield f"http://127.0.0.1:{port}"
    finally:
        holder.close()
        server.stop()
        await serving


def real_server(app, config: RunConfig, *, lifespan: bool, options: Mapping[str, Any], timeout: float):
    """The real server `config` names, serving `app` on the running loop
    (an async context manager yielding its base URL).  `options` are
    uvicorn.Config arguments; the other servers take none."""
    if config.server == "uvicorn":
        return uvicorn_server(app, lifespan=lifespan, options=dict(options), timeout=timeout, http=config.http or "h11")
    if config.server == "hypercorn":
        return hypercorn_server(app, lifespan=lifespan, timeout=timeout)
    if config.server == "granian":
        return granian_server(app, lifespan=lifespan, timeout=timeout)
    raise ValueError(f"no real server called {config.server!r}")
