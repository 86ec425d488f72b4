"""Thread pools: which offloading calls copy the context, and which do not.

`asyncio.to_thread`, Starlette's `run_in_threadpool` and
`anyio.to_thread.run_sync` run the job inside a copy of the caller's
context.  `loop.run_in_executor` and `ThreadPoolExecutor.submit` do not:
the job runs in the worker thread's own context, which outlives the job.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import ClientRequest, per_request, scenario

trace_id: ContextVar = ContextVar("trace_id", default=None)
TRACE = "req-abc-123"


def app_calling(offload):
    """An app whose endpoint sets the trace ID, then awaits `offload()`."""

    async def endpoint(request):
        trace_id.set(request.headers.get("x-trace-id", TRACE))
        await offload()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


def job():
    probe("job", trace_id)


@scenario(
    "executor-no-copy",
    summary="loop.run_in_executor runs the job without the caller's context",
    tags=["threads", "asyncio", "lost"],
    expect={"job": {"trace_id": None}},
    naive={"job": {"trace_id": TRACE}},
    why="run_in_executor hands a plain callable to the pool. The worker thread runs "
    "it in that thread's own context, which never saw the request's set.",
    fix="Submit copy_context().run with the callable (see executor-copy-context), or "
    "use asyncio.to_thread / run_in_threadpool, which copy for you.",
)
def executor_no_copy():
    return app_calling(lambda: asyncio.get_running_loop().run_in_executor(None, job))


@scenario(
    "executor-copy-context",
    summary="The fix: run_in_executor(None, copy_context().run, job) carries the value",
    tags=["threads", "asyncio", "fix"],
    expect={"job": {"trace_id": TRACE}},
    why="copy_context() snapshots the caller's context; ctx.run runs the job inside "
    "that snapshot on the worker thread.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def executor_copy_context():
    return app_calling(lambda: asyncio.get_running_loop().run_in_executor(None, copy_context().run, job))


def changing_job(label):
    probe(label, trace_id)
    trace_id.set(f"set in {label}")


async def to_thread_both_ways():
    await asyncio.to_thread(changing_job, "to_thread")
    probe("after.to_thread", trace_id)
    await run_in_threadpool(changing_job, "run_in_threadpool")
    probe("after.run_in_threadpool", trace_id)


@scenario(
    "to-thread",
    summary="asyncio.to_thread and run_in_threadpool copy forward; nothing comes back",
    tags=["threads", "asyncio", "starlette", "lost"],
    expect={
        "to_thread": {"trace_id": TRACE},
        "after.to_thread": {"trace_id": TRACE},
        "run_in_threadpool": {"trace_id": TRACE},
        "after.run_in_threadpool": {"trace_id": TRACE},
    },
    naive={
        "after.to_thread": {"trace_id": "set in to_thread"},
        "after.run_in_threadpool": {"trace_id": "set in run_in_threadpool"},
    },
    why="Both run the job in a fresh copy of the caller's context. The job sees "
    "everything set before the call; whatever it sets stays in the copy.",
    fix="Return values from the job instead of setting ContextVars in it.",
)
def to_thread():
    return app_calling(to_thread_both_ways)


@scenario(
    "executor-thread-leak",
    summary="A worker thread's own context keeps one request's value for the next",
    tags=["threads", "asyncio", "leak"],
    requests=[ClientRequest(headers={"x-trace-id": "trace-1"}), ClientRequest(headers={"x-trace-id": "trace-2"})],
    expect={"job.start": {"trace_id": per_request(None, "trace-1")}},
    naive={"job.start": {"trace_id": None}},
    why="Without copy_context, a job runs in its worker thread's own context, and that "
    "context lives as long as the thread. A job that sets a value without resetting "
    "it leaves it there for whichever job the thread runs next: request 2 sees "
    "request 1's trace ID.",
    fix="Run jobs in copy_context().run (each job gets a throwaway copy), or set and "
    "reset in try/finally inside the job.",
)
def executor_thread_leak():
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker")

    def leaky_job(trace):
        probe("job.start", trace_id)
        trace_id.set(trace)  # no reset: the worker's context keeps it

    async def endpoint(request):
        trace = request.headers["x-trace-id"]
        await asyncio.get_running_loop().run_in_executor(pool, leaky_job, trace)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])
