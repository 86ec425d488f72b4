"""Handling `Context` objects by hand: `Context.run` and coroutines, entering twice.

`Context.run(fn)` runs `fn` inside the context and returns what it returns.
Called with an `async def` function, what it runs is the *creation* of the
coroutine object; the body runs later, step by step, in whichever context
the task awaiting it is in.  And a Context can be entered by only one
thread (and once) at a time, so one Context object shared by jobs that
overlap raises `RuntimeError`.

Sources: python/cpython#88997 (bpo-44834, "contextvars.Context.run w/
coroutines gives inconsistent behavior", opened by adriangb of Starlette
and FastAPI, answered "this isn't a Python bug"); python/cpython#84500 (bpo-40320) and PR #31837,
which added `create_task(..., context=)` in 3.11 as the way to run a
coroutine in a given context; python/cpython#99633 / PR #99634 (what
"entered" means); erdewit/nest_asyncio#71 (the RuntimeError as users meet it).
"""

import asyncio
import threading
from contextvars import Context, ContextVar, copy_context

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import attempt, probe, raised
from ctxlab.scenario import scenario

tenant: ContextVar = ContextVar("tenant", default=None)


async def audit_job():
    probe("job", tenant)
    tenant.set("set by the job")


def isolated_context():
    """A copy of the request's context in which the job should run."""
    ctx = copy_context()
    ctx.run(tenant.set, "the job's own")
    return ctx


def app_running(run_job):
    async def endpoint(request):
        tenant.set("request")
        await run_job(isolated_context())
        probe("after", tenant)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


@scenario(
    "context-run-coroutine",
    summary="await ctx.run(async_fn) runs none of the body in ctx: the job sees and changes the caller's context",
    tags=["contexts", "asyncio", "leak"],
    expect={"job": {"tenant": "request"}, "after": {"tenant": "set by the job"}},
    naive={"job": {"tenant": "the job's own"}, "after": {"tenant": "request"}},
    why="ctx.run(audit_job) calls audit_job() inside ctx, which only creates the "
    "coroutine object and returns it. Awaiting it then runs the body in the awaiting "
    "task, in the request's own context: the job never sees ctx, and its set "
    "changes the request's value. (Driving the coroutine by hand with "
    "ctx.run(coro.send, None) runs only the first step in ctx.)",
    fix="Run the coroutine in a task created inside the context: "
    "ctx.run(asyncio.create_task, coro), or asyncio.create_task(coro, context=ctx) "
    "on 3.11+ (see context-run-task).",
)
def context_run_coroutine():
    return app_running(lambda ctx: ctx.run(audit_job))


@scenario(
    "context-run-task",
    summary="The fix: a task created inside ctx.run runs the whole body in (a copy of) ctx",
    tags=["contexts", "asyncio", "fix"],
    expect={"job": {"tenant": "the job's own"}, "after": {"tenant": "request"}},
    why="A task copies the current context when it is created; created inside "
    "ctx.run, that is ctx. Every step of the body then runs in that copy, and the "
    "job's set stays there.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def context_run_task():
    return app_running(lambda ctx: ctx.run(asyncio.create_task, audit_job()))


@scenario(
    "context-entered-twice",
    summary="One Context object shared by two overlapping worker threads: the second raises RuntimeError",
    tags=["contexts", "threads", "errors"],
    expect={
        "job.first": {"tenant": "captured at startup"},
        "job.second": {
            "run": raised("RuntimeError", "cannot enter context: <_contextvars.Context object> is already entered")
        },
    },
    naive={"job.second": {"run": None}},
    why="Context.run enters the context for the duration of the call, and a context "
    "can be entered only once at a time: it is a single mutable mapping, so two "
    "threads running in it at once would see each other's sets. Capturing one "
    "context (at startup, or once per request) and running every job in it works "
    "while jobs happen to run one at a time, and raises as soon as two overlap.",
    fix="Take a fresh copy per job: run_in_executor(None, copy_context().run, job), "
    "asyncio.to_thread, or run_in_threadpool.",
)
def context_entered_twice():
    shared = Context()  # what a library captured once, at startup
    shared.run(tenant.set, "captured at startup")
    first_is_running, first_may_finish = threading.Event(), threading.Event()

    def first_job():
        first_is_running.set()
        probe("job.first", tenant)
        first_may_finish.wait(5)

    def second_job():
        first_is_running.wait(5)
        attempt("job.second", "run", lambda: shared.run(probe, "never", tenant))
        first_may_finish.set()

    async def endpoint(request):
        workers = [
            threading.Thread(target=shared.run, args=(first_job,), name="worker-1"),
            threading.Thread(target=second_job, name="worker-2"),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            await asyncio.to_thread(worker.join)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])
