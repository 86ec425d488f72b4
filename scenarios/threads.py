"""Thread pools: which offloading calls copy the context, and which do not.

`asyncio.to_thread`, Starlette's `run_in_threadpool` and
`anyio.to_thread.run_sync` run the job inside a copy of the caller's
context.  `loop.run_in_executor` and `ThreadPoolExecutor.submit` do not:
the job runs in the worker thread's own context, which outlives the job.

Python 3.14 with `sys.flags.thread_inherit_context` (on in free-threaded
builds, `-X thread_inherit_context=1` elsewhere) starts every new thread in
a copy of its starter's context, and a pool starts its workers on the first
`submit`: the worker's own context is then a copy of the submitting
request's (see thread-inherit-context).
"""

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note, probe
from ctxlab.scenario import ClientRequest, by_flag, per_request, scenario

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
    # The loop's default pool is new, so this request's submit starts its worker.
    expect={"job": {"trace_id": by_flag("thread_inherit_context", on=TRACE, off=None)}},
    naive={"job": {"trace_id": TRACE}},
    why="run_in_executor hands a plain callable to the pool. The worker thread runs "
    "it in that thread's own context, which never saw the request's set (with "
    "Python 3.14's thread_inherit_context, the worker started by this very submit "
    "holds a copy of the request's context: it sees the value, by accident).",
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
    "request 1's trace ID. (The same with Python 3.14's thread_inherit_context: the "
    "endpoint sets nothing before submitting.)",
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


user: ContextVar = ContextVar("user", default=None)


@scenario(
    "thread-inherit-context",
    summary="Python 3.14's thread_inherit_context: a pool worker keeps the context of the request that started it",
    tags=["threads", "asyncio", "leak"],
    requests=[ClientRequest(headers={"x-user": "alice"}), ClientRequest(headers={"x-user": "bob"})],
    expect={
        "pool.job": {
            "user": by_flag("thread_inherit_context", on="alice", off=None),
            "thread_inherit_context": by_flag("thread_inherit_context", on=True, off=False),
        },
        "thread.job": {"user": by_flag("thread_inherit_context", on=per_request("alice", "bob"), off=None)},
    },
    naive={"pool.job": {"user": per_request("alice", "bob")}, "thread.job": {"user": per_request("alice", "bob")}},
    why="With sys.flags.thread_inherit_context (Python 3.14: on in free-threaded builds, "
    "-X thread_inherit_context=1 or PYTHON_THREAD_INHERIT_CONTEXT=1 elsewhere), "
    "threading.Thread runs its target in a copy of the context of whoever started it "
    "(Thread(context=...) picks one explicitly). A thread started per request is "
    "fine: it sees its request. A pool starts its worker on the first submit, so the "
    "worker's own context is a copy of request 1's, and every later job without "
    "copy_context runs in it: request 2's job sees alice. Without the flag, both "
    "threads start in an empty context and see nothing. Sources: CPython gh-128555 "
    "and PR gh-128209 (Thread(context=...) and the flag), asgiref PR 564 (the same leak in Local).",
    fix="Submit copy_context().run with the job (each job runs in a copy of its "
    "caller's context, with or without the flag), or use asyncio.to_thread / "
    "run_in_threadpool.",
)
def thread_inherit_context():
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker")

    def pool_job():
        probe("pool.job", user)
        note("pool.job", "thread_inherit_context", bool(getattr(sys.flags, "thread_inherit_context", 0)))

    def thread_job():
        probe("thread.job", user)

    async def endpoint(request):
        user.set(request.headers["x-user"])
        await asyncio.get_running_loop().run_in_executor(pool, pool_job)
        thread = threading.Thread(target=thread_job, name="per-request")
        thread.start()
        thread.join()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])
