"""Logging through a queue: where a request-ID filter runs decides what it reads.

The recommended way to keep logging off the event loop is a `QueueHandler`
on the logger and a `QueueListener` that hands records to the real handlers
from a thread of its own.  Filters attached to those real handlers run in
the listener's thread, in that thread's own context, long after the request
logged: a filter that reads a ContextVar there stamps every line with the
default.  Filters on the `QueueHandler` (or on the logger) run in the code
that logs, inside the request's context, and whatever they put on the record
travels through the queue with it.

Sources: the Python logging cookbook's "Dealing with handlers that block"
(the QueueHandler/QueueListener recipe) next to its "Use of contextvars"
(a filter that reads request data from ContextVars): combined, they give
this pitfall.  The same loss in other logging threads: pydicom/pynetdicom#918
and #582, Delgan/loguru#1318.  No tracker issue for the queue case itself
was found; it was reproduced here on Python 3.10 to 3.13.
"""

import asyncio
import logging
import queue
from contextlib import asynccontextmanager
from contextvars import ContextVar
from logging.handlers import QueueHandler, QueueListener

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note
from ctxlab.scenario import ClientRequest, per_request, scenario

request_id: ContextVar = ContextVar("request_id", default="-")


class RequestIDFilter(logging.Filter):
    def filter(self, record):
        record.request_id = request_id.get()
        return True


class Lines(logging.Handler):
    """The real handler behind the queue: keeps formatted lines."""

    def __init__(self):
        super().__init__()
        self.lines = []
        self.setFormatter(logging.Formatter("[%(request_id)s] %(message)s"))

    def emit(self, record):
        self.lines.append(self.format(record))


def queued_logging_app(filter_on_queue_handler):
    records = queue.Queue()
    lines = Lines()
    to_queue = QueueHandler(records)
    (to_queue if filter_on_queue_handler else lines).addFilter(RequestIDFilter())
    logger = logging.Logger("app")  # unregistered: each run gets its own
    logger.addHandler(to_queue)
    listener = QueueListener(records, lines)

    @asynccontextmanager
    async def lifespan(app):
        listener.start()
        yield
        listener.stop()

    async def endpoint(request):
        request_id.set(request.headers["x-request-id"])
        logger.info("handling")
        await asyncio.to_thread(records.join)  # until the listener has handled it
        note("endpoint", "log", lines.lines[-1])
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)


TWO_REQUESTS = [ClientRequest(headers={"x-request-id": "req-1"}), ClientRequest(headers={"x-request-id": "req-2"})]


@scenario(
    "queue-listener-filter",
    summary="A request-ID filter on the handler behind a QueueListener runs in the listener thread: every line says '-'",
    tags=["logging", "threads", "lost"],
    requests=TWO_REQUESTS,
    lifespan=True,
    expect={"endpoint": {"log": "[-] handling"}},
    naive={"endpoint": {"log": per_request("[req-1] handling", "[req-2] handling")}},
    why="A handler's filters run when the handler handles the record. Behind a "
    "QueueListener that happens in the listener's thread, whose context never saw "
    "the request's set, so the ContextVar reads its default. The record itself "
    "carries nothing of the request's context through the queue.",
    fix="Attach the filter to the QueueHandler (or to the logger): it then runs in "
    "the request's context and the attribute it sets travels with the record "
    "(see queue-handler-filter).",
)
def queue_listener_filter():
    return queued_logging_app(filter_on_queue_handler=False)


@scenario(
    "queue-handler-filter",
    summary="The fix: the filter on the QueueHandler stamps the record before it crosses to the listener",
    tags=["logging", "threads", "fix"],
    requests=TWO_REQUESTS,
    lifespan=True,
    expect={"endpoint": {"log": per_request("[req-1] handling", "[req-2] handling")}},
    why="QueueHandler.handle runs its filters in the thread and context that logged, "
    "then enqueues the record with the request_id attribute already on it; the "
    "listener's formatter only reads that attribute.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def queue_handler_filter():
    return queued_logging_app(filter_on_queue_handler=True)
