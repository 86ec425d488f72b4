"""A long-lived worker started lazily by the first request that needs it.

Write-behind queues, batchers and connection keep-alive loops are often
started on first use: `asyncio.create_task(worker())` inside whichever
request comes first.  The task copies that request's context, for good:
everything the worker does for every later request still runs with the
first request's trace ID (and user, and tenant).

Sources: ogx-ai/ogx#5168 ("prevent OTel context leak in fire-and-forget
background tasks": one trace collected 334 database writes of other
requests through a worker spawned by the first one);
open-telemetry/opentelemetry-python-contrib#4251 (work outliving the
request still parented to it).  The Python docs' `create_task(...,
context=)` (3.11, python/cpython#31837) is the tool for the fix.
"""

import asyncio
from contextvars import Context, ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note
from ctxlab.scenario import ClientRequest, per_request, scenario

trace_id: ContextVar = ContextVar("trace_id", default=None)


class WriteBehind:
    """Queues writes; a worker task, started on first use, performs them."""

    def __init__(self, clean_context: bool):
        self.clean_context = clean_context
        self.jobs: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None  # held: the loop keeps only weak references

    async def write(self, row) -> str:
        """Queue a row; returns the trace ID the worker performed it under."""
        if self.jobs is None:
            self.jobs = asyncio.Queue()
            if self.clean_context:
                # An empty context: the worker owes nothing to this request.
                self.worker = Context().run(asyncio.create_task, self.work())
            else:
                self.worker = asyncio.create_task(self.work())  # copies this request's context
        done = asyncio.get_running_loop().create_future()
        await self.jobs.put((row, trace_id.get(), done))
        return await done

    async def work(self):
        while True:
            row, trace, done = await self.jobs.get()
            if self.clean_context:  # each job brings its own trace ID
                token = trace_id.set(trace)
                done.set_result(trace_id.get())
                trace_id.reset(token)
            else:
                done.set_result(trace_id.get())


def app_with(writer: WriteBehind):
    async def endpoint(request):
        trace_id.set(request.headers["x-trace-id"])
        note("worker", "trace_id", await writer.write({"event": "viewed"}))
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


THREE_REQUESTS = [ClientRequest(headers={"x-trace-id": f"trace-{n}"}) for n in (1, 2, 3)]


@scenario(
    "lazy-worker-first-request",
    summary="A worker task started by the first request keeps its trace ID for every later request's work",
    tags=["tasks", "asyncio", "tracing", "leak"],
    requests=THREE_REQUESTS,
    expect={"worker": {"trace_id": "trace-1"}},
    naive={"worker": {"trace_id": per_request("trace-1", "trace-2", "trace-3")}},
    why="create_task copies the current context when the task is created. Started "
    "lazily inside request 1, the worker runs forever in a copy of request 1's "
    "context, so the work it does for requests 2 and 3 is logged and traced as "
    "request 1's.",
    fix="Start long-lived workers at startup (lifespan) or in an empty context "
    "(Context().run(asyncio.create_task, ...), or create_task(..., context=Context()) "
    "on 3.11+), and carry per-job values in the job itself (see lazy-worker-clean-context).",
)
def lazy_worker_first_request():
    return app_with(WriteBehind(clean_context=False))


@scenario(
    "lazy-worker-clean-context",
    summary="The fix: the worker starts in an empty context and each job carries its own trace ID",
    tags=["tasks", "asyncio", "tracing", "fix"],
    requests=THREE_REQUESTS,
    expect={"worker": {"trace_id": per_request("trace-1", "trace-2", "trace-3")}},
    why="Nothing of request 1 is copied into the worker; the trace ID travels in the "
    "queue item and is set (and reset) around each job.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def lazy_worker_clean_context():
    return app_with(WriteBehind(clean_context=True))
