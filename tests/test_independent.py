"""Every scenario, reproduced from scratch without ctxlab, must agree with it.

Each repro below is a minimal standalone program: plain Starlette/FastAPI,
plain httpx, one fresh task per request as a server does, and a plain dict
for what was seen.  None of it imports ctxlab, so a bug in ctxlab's recorder
or runner cannot hide in both places at once.
"""

import asyncio
import contextvars
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from contextvars import ContextVar
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest
from conftest import run_named
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

REPROS = {}


def repro(name):
    def register(fn):
        REPROS[name] = fn
        return fn

    return register


class Seen(dict):
    """(probe, var name) -> the values seen there, in order."""

    def var(self, probe, var):
        try:
            observed = var.get()
        except LookupError:
            observed = "<unset>"
        self.value(probe, var.name, observed)

    def value(self, probe, name, observed):
        self.setdefault((probe, name), []).append(observed)

    def call(self, probe, name, action):
        try:
            self.value(probe, name, action())
        except Exception as exc:  # noqa: BLE001 - any exception is an observation
            message = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))
            self.value(probe, name, {"raised": type(exc).__name__, "message": message})


def serve(app, *requests, fresh_tasks=True, concurrent=False, crash_ok=False):
    """Send (path, headers) requests; each from a fresh task unless told not to."""

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:

            async def one(path, headers):
                try:
                    await client.get(path, headers=headers)
                except Exception:
                    if not crash_ok:
                        raise

            loop = asyncio.get_running_loop()
            calls = [one(*r) for r in (requests or [("/", {})])]
            if not fresh_tasks:
                for call in calls:
                    await call
            elif concurrent:
                await asyncio.gather(*(contextvars.Context().run(loop.create_task, c) for c in calls))
            else:
                for call in calls:
                    await contextvars.Context().run(loop.create_task, call)

    asyncio.run(main())


def starlette_app(endpoint, *middleware):
    app = Starlette(routes=[Route("/", endpoint)])
    for cls in middleware:
        app.add_middleware(cls)
    return app


def pure_after(seen, probe, *variables):
    """A pure ASGI middleware class that reads `variables` after the app."""

    class After:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            await self.app(scope, receive, send)
            if scope["type"] == "http":
                for var in variables:
                    seen.var(probe, var)

    return After


# -- middleware order (the Starlette PR) --------------------------------------------------
def middleware_order(*order):
    context, seen = ContextVar("context", default=None), Seen()

    class Bad(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            response = await call_next(request)
            seen.var("bad.after", context)
            return response

    async def home(request):
        context.set({"random_int": 42})
        seen.var("endpoint", context)
        return PlainTextResponse("x")

    layers = {"bad": Bad, "shiny": pure_after(seen, "shiny.after", context)}
    serve(starlette_app(home, *[layers[name] for name in order]))
    return seen


repro("bad-then-shiny")(lambda: middleware_order("bad", "shiny"))
repro("shiny-then-bad")(lambda: middleware_order("shiny", "bad"))
repro("bad-only")(lambda: middleware_order("bad"))
repro("shiny-only")(lambda: middleware_order("shiny"))


# -- the FastAPI audit (seed 000) ----------------------------------------------------------
def audit(kind):
    request_id, user, seen = ContextVar("request_id"), ContextVar("user"), Seen()
    alice = {"id": 123, "name": "alice"}

    class RequestID(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            request_id.set("req-0001")
            return await call_next(request)

    class SetUser(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            user.set(alice)
            return await call_next(request)

    class Audit(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            response = await call_next(request)
            if kind == "state":
                seen.value("audit.after", "request.state.user", getattr(request.state, "user", "<unset>"))
            else:
                seen.var("audit.after", request_id)
                seen.var("audit.after", user)
            return response

    async def dependency(request: FastAPIRequest):
        user.set(alice)
        request.state.user = alice

    app = FastAPI()

    @app.get("/u", dependencies=[] if kind == "user-middleware" else [Depends(dependency)])
    async def endpoint():
        seen.var("endpoint", request_id)
        seen.var("endpoint", user)

    app.add_middleware(pure_after(seen, "audit.after", request_id, user) if kind == "pure" else Audit)
    if kind == "user-middleware":
        app.add_middleware(SetUser)
    app.add_middleware(RequestID)
    serve(app, ("/u", {}))
    return seen


repro("dependency-audit")(lambda: audit("plain"))
repro("dependency-audit-request-state")(lambda: audit("state"))
repro("dependency-audit-pure-asgi")(lambda: audit("pure"))
repro("dependency-audit-user-middleware")(lambda: audit("user-middleware"))


# -- FastAPI execution model -------------------------------------------------------------------
def tenant_dependency(is_async):
    tenant, seen = ContextVar("tenant", default=None), Seen()

    def sync_dep():
        tenant.set("acme")
        seen.var("dependency", tenant)

    async def async_dep():
        sync_dep()

    app = FastAPI()

    @app.get("/", dependencies=[Depends(async_dep if is_async else sync_dep)])
    async def endpoint():
        seen.var("endpoint", tenant)

    serve(app)
    return seen


repro("sync-dependency")(lambda: tenant_dependency(False))
repro("async-dependency")(lambda: tenant_dependency(True))


@repro("sync-endpoint")
def sync_endpoint():
    tenant, seen = ContextVar("tenant", default=None), Seen()
    app = FastAPI()

    @app.get("/")
    def endpoint():
        tenant.set("acme")
        seen.var("endpoint", tenant)

    app.add_middleware(pure_after(seen, "middleware.after", tenant))
    serve(app)
    return seen


@repro("yield-dependency-reset")
def yield_dependency_reset():
    session, seen = ContextVar("session"), Seen()

    def sync_dep():
        token = session.set("sync")
        yield
        seen.call("sync.teardown", "reset", lambda: session.reset(token))

    async def async_dep():
        token = session.set("async")
        yield
        seen.call("async.teardown", "reset", lambda: session.reset(token))

    app = FastAPI()
    app.get("/s", dependencies=[Depends(sync_dep)])(lambda: {})
    app.get("/a", dependencies=[Depends(async_dep)])(lambda: {})
    serve(app, ("/s", {}), ("/a", {}))
    return seen


@repro("exception-handler")
def exception_handler():
    stage, seen = ContextVar("stage"), Seen()

    class Oops(Exception):
        pass

    class Passthrough(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            return await call_next(request)

    app = FastAPI()

    @app.get("/refused")
    async def refused():
        stage.set("in endpoint")
        raise Oops()

    @app.get("/crash")
    async def crash():
        stage.set("in endpoint")
        raise ValueError()

    @app.exception_handler(Oops)
    async def on_oops(request, exc):
        seen.var("refused.handler", stage)
        return JSONResponse({}, status_code=418)

    @app.exception_handler(Exception)
    async def on_any(request, exc):
        seen.var("500.handler", stage)
        return JSONResponse({}, status_code=500)

    app.add_middleware(Passthrough)
    serve(app, ("/refused", {}), ("/crash", {}), crash_ok=True)
    return seen


# -- FastAPI yield-dependency teardown ---------------------------------------------------------------
def yield_teardown(consumer):
    """A yield dependency sets `tenant` and resets it in teardown; `consumer`
    builds the endpoint and whatever runs after it."""
    tenant, seen = ContextVar("tenant"), Seen()

    async def tenant_scope(request: FastAPIRequest):
        request.state.tenant = "acme"
        token = tenant.set("acme")
        try:
            yield
        finally:
            tenant.reset(token)

    app = FastAPI()
    consumer(app, Depends(tenant_scope), tenant, seen)
    serve(app)
    return seen


def background_reads(app, dependency, tenant, seen):
    async def job():
        seen.var("background", tenant)

    @app.get("/", dependencies=[dependency])
    async def endpoint(tasks: BackgroundTasks):
        seen.var("endpoint", tenant)
        tasks.add_task(job)


def background_gets_argument(app, dependency, tenant, seen):
    async def job(value):
        token = tenant.set(value)
        seen.var("background", tenant)
        tenant.reset(token)

    @app.get("/", dependencies=[dependency])
    async def endpoint(tasks: BackgroundTasks):
        tasks.add_task(job, tenant.get())


def handler_reads(read_state):
    def consumer(app, dependency, tenant, seen):
        class Refused(Exception):
            pass

        @app.get("/", dependencies=[dependency])
        async def endpoint():
            if not read_state:
                seen.var("endpoint", tenant)
            raise Refused()

        @app.exception_handler(Refused)
        async def on_refused(request, exc):
            seen.var("handler", tenant)
            if read_state:
                seen.value("handler", "request.state.tenant", request.state.tenant)
            return JSONResponse({}, status_code=418)

    return consumer


repro("yield-teardown-vs-background")(lambda: yield_teardown(background_reads))
repro("yield-teardown-vs-background-argument")(lambda: yield_teardown(background_gets_argument))
repro("yield-teardown-before-handler")(lambda: yield_teardown(handler_reads(read_state=False)))
repro("yield-teardown-before-handler-request-state")(lambda: yield_teardown(handler_reads(read_state=True)))


# -- threads ----------------------------------------------------------------------------------------
def offloading(offload):
    trace_id, seen = ContextVar("trace_id", default=None), Seen()

    async def endpoint(request):
        trace_id.set("req-abc-123")
        await offload(lambda: seen.var("job", trace_id))
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


repro("executor-no-copy")(lambda: offloading(lambda job: asyncio.get_running_loop().run_in_executor(None, job)))
repro("executor-copy-context")(
    lambda: offloading(
        lambda job: asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, job)
    )
)


@repro("to-thread")
def to_thread():
    trace_id, seen = ContextVar("trace_id", default=None), Seen()

    def job(label):
        seen.var(label, trace_id)
        trace_id.set("changed")

    async def endpoint(request):
        trace_id.set("req-abc-123")
        await asyncio.to_thread(job, "to_thread")
        seen.var("after.to_thread", trace_id)
        await run_in_threadpool(job, "run_in_threadpool")
        seen.var("after.run_in_threadpool", trace_id)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


@repro("executor-thread-leak")
def executor_thread_leak():
    trace_id, seen, pool = ContextVar("trace_id", default=None), Seen(), ThreadPoolExecutor(1)

    def job(trace):
        seen.var("job.start", trace_id)
        trace_id.set(trace)

    async def endpoint(request):
        await asyncio.get_running_loop().run_in_executor(pool, job, request.headers["t"])
        return PlainTextResponse("x")

    serve(starlette_app(endpoint), ("/", {"t": "trace-1"}), ("/", {"t": "trace-2"}))
    pool.shutdown()
    return seen


# -- tasks and tokens ----------------------------------------------------------------------------------
def in_endpoint(handler):
    seen = Seen()

    async def endpoint(request):
        await handler(seen)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


user = ContextVar("user", default=None)
trace_id = ContextVar("trace_id", default=None)


@repro("task-inherits")
def task_inherits():
    async def handler(seen):
        user.set("alice")
        await asyncio.create_task(child(seen))

    async def child(seen):
        seen.var("child", user)

    return in_endpoint(handler)


@repro("task-changes-stay-in-task")
def task_changes_stay_in_task():
    async def handler(seen):
        user.set("alice")

        async def child():
            user.set("bob")
            seen.var("child", user)

        await asyncio.create_task(child())
        seen.var("parent.after", user)

    return in_endpoint(handler)


@repro("task-snapshot-time")
def task_snapshot_time():
    async def handler(seen):
        go = asyncio.Event()

        async def worker():
            await go.wait()
            seen.var("worker", user)

        task = asyncio.create_task(worker())
        await asyncio.sleep(0)
        user.set("alice")
        seen.var("request", user)
        go.set()
        await task

    return in_endpoint(handler)


@repro("reset-wrong-context")
def reset_wrong_context():
    async def handler(seen):
        token = trace_id.set("x")

        async def child():
            seen.call("child.reset", "reset", lambda: trace_id.reset(token))

        await asyncio.create_task(child())

    return in_endpoint(handler)


@repro("reset-twice")
def reset_twice():
    async def handler(seen):
        token = trace_id.set("x")
        seen.call("first.reset", "reset", lambda: trace_id.reset(token))
        seen.call("second.reset", "reset", lambda: trace_id.reset(token))

    return in_endpoint(handler)


@repro("threading-local-interleave")
def threading_local_interleave():
    local, request_id, foreign = threading.local(), ContextVar("request_id"), {"local": 0, "var": 0}

    async def endpoint(request):
        mine = request.headers["n"]
        local.request_id = mine
        request_id.set(mine)
        await asyncio.sleep(0)
        foreign["local"] += local.request_id != mine
        foreign["var"] += request_id.get() != mine
        return PlainTextResponse("x")

    serve(starlette_app(endpoint), *[("/", {"n": str(n)}) for n in range(50)], concurrent=True)
    seen = Seen()
    seen.value("tally", "threading.local foreign", foreign["local"])
    seen.value("tally", "ContextVar foreign", foreign["var"])
    return seen


# -- async generators ------------------------------------------------------------------------------------
def generator_sets(reset_before_yield):
    page = ContextVar("page", default=None)

    async def pages():
        for number in (1, 2):
            token = page.set(number)
            if reset_before_yield:
                page.reset(token)
            yield number

    async def handler(seen):
        page.set("request's page")
        async for _ in pages():
            pass
        seen.var("endpoint.after", page)

    return in_endpoint(handler)


repro("asyncgen-set-leaks")(lambda: generator_sets(False))
repro("asyncgen-set-reset-before-yield")(lambda: generator_sets(True))


def generator_left_early(close):
    span = ContextVar("span", default=None)

    async def handler(seen):
        exited = asyncio.Event()

        async def rows():
            token = span.set("query")
            try:
                yield 1
                yield 2
            finally:
                seen.var("span.exit", span)
                seen.call("span.exit", "reset", lambda: span.reset(token))
                exited.set()

        if close:
            async with aclosing(rows()) as iterator:
                async for _ in iterator:
                    break
        else:
            async for _ in rows():
                break
        await exited.wait()
        seen.var("endpoint.after", span)

    return in_endpoint(handler)


repro("asyncgen-finalized-elsewhere")(lambda: generator_left_early(close=False))
repro("asyncgen-finalized-elsewhere-aclosing")(lambda: generator_left_early(close=True))


def test_opentelemetry_logs_failed_detach_for_a_span_left_in_an_async_generator(caplog):
    """What asyncgen-finalized-elsewhere stands for, with the real OpenTelemetry API."""
    trace = pytest.importorskip("opentelemetry.trace")
    tracer = trace.get_tracer("independent")

    async def rows():
        with tracer.start_as_current_span("query"):
            yield 1
            yield 2

    async def endpoint(request):
        async for _ in rows():
            break
        for _ in range(5):  # the finalizer's aclose() task runs within a few loop turns
            await asyncio.sleep(0)
        return PlainTextResponse("x")

    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        serve(starlette_app(endpoint))
    failures = [r for r in caplog.records if r.getMessage() == "Failed to detach context"]
    assert len(failures) == 1 and failures[0].exc_info[0] is ValueError


# -- tracing --------------------------------------------------------------------------------------------
@repro("trace-id-precedence")
def trace_id_precedence():
    trace, seen, generated = ContextVar("trace_id", default=None), Seen(), iter(range(1, 100))

    class Trace:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            headers = dict(scope["headers"])
            parent = headers.get(b"traceparent", b"").decode().split("-")
            chosen = (
                headers.get(b"x-trace-id", b"").decode()
                or (parent[1] if len(parent) == 4 and len(parent[1]) == 32 else None)
                or f"{next(generated):032x}"
            )
            token = trace.set(chosen)
            try:
                await self.app(scope, receive, send)
            finally:
                trace.reset(token)
                seen.var("after.reset", trace)

    async def endpoint(request):
        seen.var("endpoint", trace)
        return PlainTextResponse("x")

    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    serve(
        starlette_app(endpoint, Trace),
        ("/", {"x-trace-id": "pinned-by-proxy", "traceparent": parent}),
        ("/", {"traceparent": parent}),
        ("/", {"traceparent": "garbage"}),
        ("/", {}),
    )
    return seen


@repro("trace-id-logging")
def trace_id_logging():
    trace, seen, lines = ContextVar("trace_id", default=None), Seen(), []

    class Stamp(logging.Filter):
        def filter(self, record):
            lines.append(f"[{trace.get() or 'no-trace'}] {record.getMessage()}")
            return False

    logger = logging.Logger("independent")
    logger.addFilter(Stamp())

    async def endpoint(request):
        loop = asyncio.get_running_loop()
        logger.info("handling")
        await loop.run_in_executor(None, logger.info, "in pool, no copy")
        await loop.run_in_executor(None, contextvars.copy_context().run, logger.info, "in pool, copied")
        seen.value("endpoint", "log", list(lines))
        seen.value("endpoint", "no-trace lines", sum("no-trace" in line for line in lines))
        return PlainTextResponse("x")

    class SetTrace:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            token = trace.set("req-7")
            try:
                await self.app(scope, receive, send)
            finally:
                trace.reset(token)
                seen.var("after.reset", trace)

    serve(starlette_app(endpoint, SetTrace))
    return seen


# -- responses, lifespan, client ---------------------------------------------------------------------
@repro("streaming-body")
def streaming_body():
    stage, seen = ContextVar("stage", default=None), Seen()

    async def body():
        seen.var("body.start", stage)
        stage.set("set while streaming")
        yield b"x"

    async def endpoint(request):
        stage.set("set in endpoint")
        return StreamingResponse(body())

    serve(starlette_app(endpoint, pure_after(seen, "middleware.after", stage)))
    return seen


def chunked_body(make_body):
    """Chunk 1 sets a var, chunk 2 reads it, the finally resets it."""
    stage, seen = ContextVar("stage", default=None), Seen()

    def steps():
        token = stage.set("set in chunk 1")
        try:
            seen.var("chunk.1", stage)
            yield b"1"
            seen.var("chunk.2", stage)
            yield b"2"
        finally:
            seen.call("body.finally", "reset", lambda: stage.reset(token))

    async def endpoint(request):
        stage.set("set in endpoint")
        return StreamingResponse(make_body(steps))

    serve(starlette_app(endpoint, pure_after(seen, "middleware.after", stage)))
    return seen


async def as_async(steps):
    for chunk in steps():
        yield chunk


repro("sync-streaming-generator")(lambda: chunked_body(lambda steps: steps()))
repro("sync-streaming-generator-async-body")(lambda: chunked_body(as_async))


def reset_when_streamed(set_in_body):
    stage, seen = ContextVar("stage", default=None), Seen()

    async def endpoint(request):
        token = None if set_in_body else stage.set("set in endpoint")

        async def body():
            mine = stage.set("set in body") if set_in_body else token
            try:
                yield b"x"
            finally:
                seen.call("body.finally", "reset", lambda: stage.reset(mine))

        return StreamingResponse(body())

    serve(starlette_app(endpoint, pure_after(seen, "middleware.after", stage)))
    return seen


repro("streaming-reset-in-finally")(lambda: reset_when_streamed(False))
repro("streaming-reset-in-finally-set-in-body")(lambda: reset_when_streamed(True))


@repro("background-task")
def background_task():
    stage, seen = ContextVar("stage", default=None), Seen()

    async def async_job():
        seen.var("background.async", stage)
        stage.set("set by async background")

    def sync_job():
        seen.var("background.sync", stage)
        stage.set("set by sync background")

    async def endpoint(request):
        stage.set("set in endpoint")
        tasks = BackgroundTasks()
        tasks.add_task(async_job)
        tasks.add_task(sync_job)
        return PlainTextResponse("x", background=tasks)

    serve(starlette_app(endpoint, pure_after(seen, "middleware.after", stage)))
    return seen


@repro("lifespan-var")
def lifespan_var():
    """Start the lifespan in its own task, as uvicorn does, then serve."""
    db, seen = ContextVar("db", default=None), Seen()

    @asynccontextmanager
    async def lifespan(app):
        db.set("pool")
        seen.var("startup", db)
        yield {"db": "pool"}

    async def endpoint(request):
        seen.var("endpoint", db)
        seen.value("endpoint", "request.state.db", request.state.db)
        return PlainTextResponse("x")

    app = Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)

    async def main():
        state, started, stop = {}, asyncio.Event(), asyncio.Event()

        async def receive():
            if not started.is_set():
                return {"type": "lifespan.startup"}
            await stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message):
            started.set()

        loop = asyncio.get_running_loop()
        task = contextvars.Context().run(loop.create_task, app({"type": "lifespan", "state": state}, receive, send))
        await started.wait()

        async def with_state(scope, receive, send):
            await app({**scope, "state": dict(state)}, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url="http://t") as client:
            await contextvars.Context().run(loop.create_task, client.get("/"))
        stop.set()
        await task

    asyncio.run(main())
    return seen


def login_twice(fresh_tasks, **var_options):
    user, seen = ContextVar("user", **var_options), Seen()

    async def endpoint(request):
        seen.var("endpoint.before", user)
        if "x-user" in request.headers:
            user.set(request.headers["x-user"])
        return PlainTextResponse("x")

    serve(starlette_app(endpoint), ("/", {"x-user": "alice"}), ("/", {}), fresh_tasks=fresh_tasks)
    return seen


repro("asgi-transport-leak")(lambda: login_twice(False))
repro("asgi-transport-task-per-request")(lambda: login_twice(True))


# -- a real uvicorn, driven the standard way (Server.serve) ---------------------------
def loop_name():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@asynccontextmanager
async def real_server(app, server="uvicorn", http="h11", **options):
    """`app` served on 127.0.0.1 the way each server's docs show; yields the port."""
    if server == "uvicorn":
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, http=http, lifespan="off", log_config=None, **options)
        runner = uvicorn.Server(config)
        serving = asyncio.create_task(runner.serve())
        while not runner.started:
            await asyncio.sleep(0.01)
        yield runner.servers[0].sockets[0].getsockname()[1]
        runner.should_exit = True
        await serving
        return
    port, stop = free_port(), asyncio.Event()
    if server == "hypercorn":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        serving = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    else:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        embedded = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGINL, log_enabled=False)
        serving = asyncio.create_task(embedded.serve())
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.01)
    yield port
    if server == "hypercorn":
        stop.set()
    else:
        embedded.stop()
    await serving


def new_loop(loop):
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def connection_leak(requests, pipelined=False, server="uvicorn", loop="asyncio", **options):
    """(headers, body) requests on one keep-alive connection, or pipelined."""
    user, seen = ContextVar("user", default=None), Seen()

    async def endpoint(request):
        seen.var("endpoint.before", user)
        seen.value("endpoint.before", "loop", loop_name())
        await request.body()
        if "x-user" in request.headers:
            user.set(request.headers["x-user"])
        return PlainTextResponse("x")

    app = Starlette(routes=[Route("/", endpoint, methods=["GET", "POST"])])

    async def main():
        async with real_server(app, server, **options) as port:
            if pipelined:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"".join(f"GET / HTTP/1.1\r\nhost: x\r\n{h}\r\n".encode() for h in requests))
                data = b""
                while data.count(b"HTTP/1.1 200") < len(requests):
                    data += await reader.read(65536)
                writer.close()
            else:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    for headers, body in requests:
                        await client.post("/", headers=headers, content=body)

    running = new_loop(loop)  # asyncio.Runner(loop_factory=...) needs 3.11
    try:
        running.run_until_complete(main())
    finally:
        running.close()
    return seen


KIB = 1024
# A fresh connection: 300 KiB (reading still paused at the end), two GETs
# around a 100 KiB body (read to the end before the response).
CONNECTION = [({"x-user": "alice"}, b"x" * 300 * KIB), ({}, b""), ({"x-user": "bob"}, b"x" * 100 * KIB), ({}, b"")]
PIPELINE = ["x-user: alice\r\n", "", ""]
UVICORN_REPROS = {
    "keepalive-large-body-leak": lambda **serving: connection_leak(CONNECTION, **serving),
    "pipelined-leak": lambda **serving: connection_leak(PIPELINE, pipelined=True, **serving),
    "reset-contextvars": lambda **serving: connection_leak(CONNECTION[:2], reset_contextvars=True, **serving),
}


def in_process_connection(count):
    """In process there is no connection to leak through: one fresh task each."""
    user, seen = ContextVar("user", default=None), Seen()

    async def endpoint(request):
        seen.var("endpoint.before", user)
        seen.value("endpoint.before", "loop", loop_name())
        if "x-user" in request.headers:
            user.set(request.headers["x-user"])
        return PlainTextResponse("x")

    serve(starlette_app(endpoint), ("/", {"x-user": "alice"}), *[("/", {})] * (count - 1))
    return seen


repro("keepalive-large-body-leak")(lambda: in_process_connection(len(CONNECTION)))
repro("pipelined-leak")(lambda: in_process_connection(len(PIPELINE)))


# -- awaiting helpers (catalog 2) ------------------------------------------------------------
@repro("wait-for-set")
def wait_for_set():
    tenant, seen = ContextVar("tenant", default=None), Seen()

    async def select(helper, value):
        tenant.set(value)
        seen.var(f"in.{helper}", tenant)

    async def task_group(*args):
        if sys.version_info >= (3, 11):
            async with asyncio.TaskGroup() as group:
                group.create_task(select(*args))
        else:
            async with anyio.create_task_group() as group:
                group.start_soon(select, *args)

    helpers = {
        "gather": lambda *args: asyncio.gather(select(*args)),
        "shield": lambda *args: asyncio.shield(select(*args)),
        "task_group": task_group,
        "wait_for": lambda *args: asyncio.wait_for(select(*args), 5),
        "wait_for_no_timeout": lambda *args: asyncio.wait_for(select(*args), None),
    }
    values = {"task_group": "set in task group", "wait_for_no_timeout": "set in wait_for(timeout=None)"}

    async def endpoint(request):
        for helper, run in helpers.items():
            await run(helper, values.get(helper, f"set in {helper}"))
            seen.var(f"after.{helper}", tenant)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


@repro("wait-for-set-timeout-scope")
def wait_for_set_timeout_scope():
    tenant, seen = ContextVar("tenant", default=None), Seen()

    async def endpoint(request):
        with anyio.fail_after(5):
            tenant.set("set under fail_after")
            seen.var("in.fail_after", tenant)
            await asyncio.sleep(0)
        seen.var("after.fail_after", tenant)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


# -- logging through a queue (catalog 2) ----------------------------------------------------
def queued_logging(filter_on_queue_handler):
    request_id, seen, records, lines = ContextVar("request_id", default="-"), Seen(), queue.Queue(), []

    class Stamp(logging.Filter):
        def filter(self, record):
            record.request_id = request_id.get()
            return True

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(f"[{record.request_id}] {record.getMessage()}")

    keep, to_queue = Keep(), QueueHandler(records)
    (to_queue if filter_on_queue_handler else keep).addFilter(Stamp())
    logger = logging.Logger("independent-queue")
    logger.addHandler(to_queue)
    listener = QueueListener(records, keep)

    async def endpoint(request):
        request_id.set(request.headers["x-request-id"])
        logger.info("handling")
        await asyncio.to_thread(records.join)
        seen.value("endpoint", "log", lines[-1])
        return PlainTextResponse("x")

    listener.start()
    try:
        serve(starlette_app(endpoint), ("/", {"x-request-id": "req-1"}), ("/", {"x-request-id": "req-2"}))
    finally:
        listener.stop()
    return seen


repro("queue-listener-filter")(lambda: queued_logging(False))
repro("queue-handler-filter")(lambda: queued_logging(True))


# -- SQLAlchemy's async_scoped_session (catalog 2) -----------------------------------------
def scoped_orders(request_scoped):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from sqlalchemy.pool import StaticPool

    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)

    seen, key, keys, metadata = Seen(), ContextVar("key"), iter(range(1, 100)), Base.metadata
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    scope = key.get if request_scoped else asyncio.current_task
    Session = async_scoped_session(async_sessionmaker(engine), scopefunc=scope)

    class Commit(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            key.set(next(keys))
            mine = Session()
            response = await call_next(request)
            await Session.commit()
            seen.value("middleware.after", "endpoint used my session", request.state.session is mine)
            count = await Session.scalar(sqlalchemy.select(sqlalchemy.func.count(Order.id)))
            seen.value("middleware.after", "orders committed", count)
            await Session.remove()
            seen.value("middleware.after", "sessions kept", len(Session.registry.registry))
            return response

    async def endpoint(request):
        request.state.session = Session()
        Session.add(Order())
        return PlainTextResponse("x")

    async def create():
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)

    asyncio.run(create())
    serve(starlette_app(endpoint, Commit), ("/", {}), ("/", {}))
    asyncio.run(engine.dispose())
    return seen


repro("scoped-session-current-task")(lambda: scoped_orders(False))
repro("scoped-session-request-scope")(lambda: scoped_orders(True))


# -- pytest-asyncio fixtures (catalog 2) ----------------------------------------------------
@repro("pytest-async-fixture")
def pytest_async_fixture():
    """A real pytest with the installed pytest-asyncio, from an endpoint."""
    pytest.importorskip("pytest_asyncio")
    seen = Seen()
    module = textwrap.dedent(
        """
        import contextvars, os, pytest, pytest_asyncio

        user = contextvars.ContextVar("user", default="anonymous")

        @pytest_asyncio.fixture
        async def logged_in():
            user.set("alice")
            print("SEEN fixture", user.get())
            yield

        @pytest.mark.asyncio
        async def test_user(logged_in):
            print("SEEN test", user.get())
        """
    )

    def run():
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "test_it.py").write_text(module)
            Path(directory, "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            plugins = ["-p", "pytest_asyncio.plugin", "-p", "no:cacheprovider"]
            command = [sys.executable, "-m", "pytest", "-s", "-q", *plugins]
            return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True).stdout

    async def endpoint(request):
        for line in (await asyncio.to_thread(run)).splitlines():
            if line.startswith("SEEN "):
                _, where, value = line.split()
                seen.value(where, "user", value)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


# -- Context objects by hand (catalog 2) ----------------------------------------------------
def run_job_in(run):
    tenant, seen = ContextVar("tenant", default=None), Seen()

    async def job():
        seen.var("job", tenant)
        tenant.set("set by the job")

    async def endpoint(request):
        tenant.set("request")
        ctx = contextvars.copy_context()
        ctx.run(tenant.set, "the job's own")
        await run(ctx, job)
        seen.var("after", tenant)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


repro("context-run-coroutine")(lambda: run_job_in(lambda ctx, job: ctx.run(job)))
repro("context-run-task")(lambda: run_job_in(lambda ctx, job: ctx.run(asyncio.create_task, job())))


@repro("context-entered-twice")
def context_entered_twice():
    tenant, seen, shared = ContextVar("tenant", default=None), Seen(), contextvars.Context()
    shared.run(tenant.set, "captured at startup")
    inside = threading.Barrier(2)

    def first():
        seen.var("job.first", tenant)
        inside.wait()  # the second job tries while this one is still inside
        inside.wait()

    def second():
        inside.wait()
        seen.call("job.second", "run", lambda: shared.run(tenant.get))
        inside.wait()

    async def endpoint(request):
        await asyncio.gather(asyncio.to_thread(shared.run, first), asyncio.to_thread(second))
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


# -- asgiref (catalog 2) ----------------------------------------------------------------------
@repro("sync-to-async-context")
def sync_to_async_context():
    sync_to_async = pytest.importorskip("asgiref.sync").sync_to_async
    user, seen = ContextVar("user", default="anonymous"), Seen()

    async def endpoint(request):
        await run_in_threadpool(user.set, "alice")
        seen.var("after.run_in_threadpool", user)
        token = await sync_to_async(user.set)("alice")
        seen.var("after.sync_to_async", user)
        try:
            seen.value("process_response.reset", "reset", await sync_to_async(user.reset)(token))
        except ValueError as exc:
            message = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))
            seen.value("process_response.reset", "reset", {"raised": "ValueError", "message": message})
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


# -- Starlette's TestClient (catalog 2) -----------------------------------------------------
@repro("testclient-context")
def client_in_portal():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette 1.x prefers httpx2; beside the point
        from starlette.testclient import TestClient

    settings, user, seen = ContextVar("settings", default=None), ContextVar("user", default="anonymous"), Seen()

    async def inner(request):
        user.set("app")
        return JSONResponse({"settings": settings.get()})

    def test():
        settings.set("configured by the test")
        seen.value("app", "settings", TestClient(starlette_app(inner)).get("/").json()["settings"])
        seen.var("test.after", user)

    async def endpoint(request):
        await asyncio.to_thread(test)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint))
    return seen


# -- anyio.from_thread (catalog 2) ----------------------------------------------------------
def from_thread(set_from_return):
    user, seen = ContextVar("user", default="anonymous"), Seen()

    async def authenticate():
        seen.var("helper", user)
        user.set("alice")
        return "alice"

    app = FastAPI()

    @app.get("/")
    def profile():
        user.set("unverified")
        resolved = anyio.from_thread.run(authenticate)
        if set_from_return:
            user.set(resolved)
        seen.var("endpoint.after", user)
        return {}

    serve(app)
    return seen


repro("from-thread-run")(lambda: from_thread(False))
repro("from-thread-run-return")(lambda: from_thread(True))


# -- a worker started by the first request (catalog 2) --------------------------------------
def lazy_worker(clean):
    trace, seen, state = ContextVar("trace_id", default=None), Seen(), {}

    async def work(jobs):
        while True:
            sent, done = await jobs.get()
            if clean:
                trace.set(sent)  # this worker's own context: nobody else reads it
            done.set_result(trace.get())

    async def endpoint(request):
        trace.set(request.headers["t"])
        if "jobs" not in state:
            state["jobs"] = asyncio.Queue()
            start = lambda: asyncio.create_task(work(state["jobs"]))  # noqa: E731
            state["worker"] = contextvars.Context().run(start) if clean else start()
        done = asyncio.get_running_loop().create_future()
        await state["jobs"].put((trace.get(), done))
        seen.value("worker", "trace_id", await done)
        return PlainTextResponse("x")

    serve(starlette_app(endpoint), *[("/", {"t": f"trace-{n}"}) for n in (1, 2, 3)])
    return seen


repro("lazy-worker-first-request")(lambda: lazy_worker(False))
repro("lazy-worker-clean-context")(lambda: lazy_worker(True))


# -- the comparison -------------------------------------------------------------------------------------
def test_every_scenario_has_an_independent_repro():
    from ctxlab.scenario import catalog

    entries = catalog().items()
    assert {name for name, entry in entries if "asgi" in entry.servers} == set(REPROS)
    assert {name for name, entry in entries if "uvicorn" in entry.tags} == set(UVICORN_REPROS)


def agree(result, repro):
    assert result.status == "pass", (result.error, result.drifted)
    reported = {}
    for o in sorted(result.observations, key=lambda o: o.seq):
        reported.setdefault((o.probe, o.var), []).append(o.observed)
    assert reported == dict(repro())


@pytest.mark.parametrize("name", sorted(REPROS))
def test_independent_repro_agrees_with_ctxlab(name):
    result = run_named(name)
    if result.status == "skipped" and result.error.startswith("needs "):
        pytest.skip(result.error)  # an optional library (SQLAlchemy, asgiref, ...) is not installed
    agree(result, REPROS[name])


@pytest.mark.parametrize("name", sorted(UVICORN_REPROS))
def test_independent_uvicorn_repro_agrees_with_ctxlab_on_uvicorn(name):
    if name == "reset-contextvars" and run_named(name, "uvicorn").status == "skipped":
        pytest.skip("needs uvicorn >= 0.45")
    agree(run_named(name, "uvicorn"), UVICORN_REPROS[name])


# -- servers and Python 3.14 (branch servers) ---------------------------------------------------------
REGION: ContextVar = ContextVar("region", default=None)


def outer_context_hidden(server="uvicorn", loop="asyncio", **options):
    """A value set before serve(): do requests see it?"""
    seen = Seen()

    async def endpoint(request):
        seen.var("endpoint", REGION)
        return PlainTextResponse("x")

    async def main():
        REGION.set("eu-west")
        async with real_server(starlette_app(endpoint), server, **options) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(2):
                    await client.get("/")

    running = new_loop(loop)
    try:
        running.run_until_complete(main())
    finally:
        running.close()
    return seen


UVICORN_REPROS["outer-context-hidden"] = outer_context_hidden

# Every real server, loop and parser ctxlab can run on.
SERVINGS = [
    {"server": "uvicorn", "loop": loop, "http": http} for loop in ("asyncio", "uvloop") for http in ("h11", "httptools")
] + [{"server": server, "loop": loop} for server in ("hypercorn", "granian") for loop in ("asyncio", "uvloop")]


@pytest.mark.parametrize("serving", SERVINGS, ids=lambda serving: "-".join(serving.values()))
@pytest.mark.parametrize("name", ["keepalive-large-body-leak", "pipelined-leak", "outer-context-hidden"])
def test_server_scenarios_agree_with_a_from_scratch_server(name, serving):
    """What each server, loop and parser does to a connection, as ctxlab reports it."""
    agree(run_named(name, **serving), lambda: UVICORN_REPROS[name](**serving))


@repro("thread-inherit-context")
def thread_inherit_context():
    user, seen, pool = ContextVar("user", default=None), Seen(), ThreadPoolExecutor(1)

    def pool_job():
        seen.var("pool.job", user)
        seen.value("pool.job", "thread_inherit_context", bool(getattr(sys.flags, "thread_inherit_context", 0)))

    async def endpoint(request):
        user.set(request.headers["x-user"])
        await asyncio.get_running_loop().run_in_executor(pool, pool_job)
        thread = threading.Thread(target=seen.var, args=("thread.job", user))
        thread.start()
        thread.join()
        return PlainTextResponse("x")

    serve(starlette_app(endpoint), ("/", {"x-user": "alice"}), ("/", {"x-user": "bob"}))
    pool.shutdown()
    return seen
