"""Request tracing with a ContextVar: choosing the ID, logging it everywhere.

A middleware picks the trace ID (an explicit X-Trace-ID header, else the
trace-id field of a W3C `traceparent`, else a generated one), sets it, and
resets it when the request ends.  A logging filter stamps it on every
record, with a `no-trace` sentinel for records made outside any request.
"""

import asyncio
import itertools
import logging
import uuid
from contextvars import ContextVar, copy_context

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note, probe
from ctxlab.scenario import ClientRequest, by_flag, per_request, scenario

trace_id: ContextVar = ContextVar("trace_id", default=None)
W3C_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{W3C_TRACE}-00f067aa0ba902b7-01"


class TraceMiddleware:
    """Pure ASGI, so the reset happens in the context that set."""

    def __init__(self, app):
        self.app = app
        self.generated = itertools.count(1)  # deterministic stand-in for uuid4

    def choose(self, headers):
        explicit = headers.get(b"x-trace-id")
        if explicit:
            return explicit.decode()
        parts = headers.get(b"traceparent", b"").decode().split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return parts[1]
        return uuid.UUID(int=next(self.generated)).hex

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = trace_id.set(self.choose(dict(scope["headers"])))
        try:
            await self.app(scope, receive, send)
        finally:
            trace_id.reset(token)
            probe("after.reset", trace_id)


def traced_app(endpoint):
    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(TraceMiddleware)
    return app


async def show_trace(request):
    probe("endpoint", trace_id)
    return PlainTextResponse("ok")


@scenario(
    "trace-id-precedence",
    summary="X-Trace-ID beats traceparent beats a generated ID; reset on teardown",
    tags=["tracing", "middleware", "works"],
    requests=[
        ClientRequest(headers={"x-trace-id": "pinned-by-proxy", "traceparent": TRACEPARENT}),
        ClientRequest(headers={"traceparent": TRACEPARENT}),
        ClientRequest(headers={"traceparent": "garbage"}),
        ClientRequest(),
    ],
    expect={
        "endpoint": {"trace_id": per_request("pinned-by-proxy", W3C_TRACE, uuid.UUID(int=1).hex, uuid.UUID(int=2).hex)},
        "after.reset": {"trace_id": None},
    },
    why="The middleware sets once per request at the boundary and resets in finally, "
    "so nothing survives into the next request on the same worker. A malformed "
    "traceparent falls through to a generated ID.",
    fix="Nothing to fix: this is the pattern to copy (as pure ASGI middleware).",
)
def trace_id_precedence():
    return traced_app(show_trace)


class TraceFilter(logging.Filter):
    def filter(self, record):
        record.trace_id = trace_id.get() or "no-trace"
        return True


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []
        self.setFormatter(logging.Formatter("[%(trace_id)s] %(message)s"))
        self.addFilter(TraceFilter())

    def emit(self, record):
        self.lines.append(self.format(record))


@scenario(
    "trace-id-logging",
    summary="A log record from a thread pool job without copy_context says no-trace",
    tags=["tracing", "threads", "logging", "lost"],
    requests=[ClientRequest(headers={"x-trace-id": "req-7"})],
    # With Python 3.14's thread_inherit_context the loop's new default pool
    # starts its worker on this request's submit, in a copy of its context.
    expect={
        "endpoint": {
            "log": by_flag(
                "thread_inherit_context",
                on=["[req-7] handling", "[req-7] in pool, no copy", "[req-7] in pool, copied"],
                off=["[req-7] handling", "[no-trace] in pool, no copy", "[req-7] in pool, copied"],
            ),
            "no-trace lines": by_flag("thread_inherit_context", on=0, off=1),
        },
        "after.reset": {"trace_id": None},
    },
    naive={"endpoint": {"no-trace lines": 0}},
    why="The filter reads the ContextVar in whatever context emits the record. "
    "run_in_executor without copy_context runs the job in the worker's own context, "
    "so the record is orphaned. Inside a request, a no-trace line is a precise "
    "signal that a boundary was crossed without propagation: assert on it in CI.",
    fix="Offload with copy_context().run, asyncio.to_thread or run_in_threadpool.",
)
def trace_id_logging():
    logger = logging.Logger("app")  # unregistered: each run gets its own
    handler = Lines()
    logger.addHandler(handler)

    async def endpoint(request):
        loop = asyncio.get_running_loop()
        logger.info("handling")
        await loop.run_in_executor(None, logger.info, "in pool, no copy")
        await loop.run_in_executor(None, copy_context().run, logger.info, "in pool, copied")
        note("endpoint", "log", handler.lines)
        note("endpoint", "no-trace lines", sum("[no-trace]" in line for line in handler.lines))
        return PlainTextResponse("ok")

    return traced_app(endpoint)
