"""asyncio tasks: a child copies its parent's context when it is created.

The copy is a snapshot: later sets in the parent do not reach the child,
and the child's sets never reach the parent.
"""

import asyncio
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import scenario

user: ContextVar = ContextVar("user", default=None)


def app_running(handler):
    async def endpoint(request):
        await handler()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


async def parent_then_child():
    user.set("alice")

    async def child():
        probe("child", user)

    await asyncio.create_task(child())


@scenario(
    "task-inherits",
    summary="A task created after a set sees the value",
    tags=["tasks", "asyncio", "works"],
    expect={"child": {"user": "alice"}},
    why="create_task copies the current context into the new task.",
    fix="Nothing to fix: this is why ContextVars work across await and create_task.",
)
def task_inherits():
    return app_running(parent_then_child)


async def child_sets():
    user.set("alice")

    async def child():
        user.set("bob")
        probe("child", user)

    await asyncio.create_task(child())
    probe("parent.after", user)


@scenario(
    "task-changes-stay-in-task",
    summary="A child task's set never reaches the parent",
    tags=["tasks", "asyncio", "lost"],
    expect={"child": {"user": "bob"}, "parent.after": {"user": "alice"}},
    naive={"parent.after": {"user": "bob"}},
    why="The child runs in its own copy of the context; awaiting it returns its "
    "result, not its context. This is the mechanism behind BaseHTTPMiddleware's "
    "and task groups' lost values.",
    fix="Return the value from the task, or share a mutable object set before the task starts.",
)
def task_changes_stay_in_task():
    return app_running(child_sets)


async def worker_started_early():
    started = asyncio.Event()
    go = asyncio.Event()

    async def worker():
        started.set()
        await go.wait()
        probe("worker", user)

    task = asyncio.create_task(worker())
    await started.wait()
    user.set("alice")  # too late for the worker: its snapshot was taken
    probe("request", user)
    go.set()
    await task


@scenario(
    "task-snapshot-time",
    summary="A task started before the set (a startup worker) never sees it",
    tags=["tasks", "asyncio", "lost"],
    expect={"request": {"user": "alice"}, "worker": {"user": None}},
    naive={"worker": {"user": "alice"}},
    why="The context is copied when the task is created, not when it reads. A "
    "background worker started at startup, or any task started before the set, "
    "keeps the snapshot it was born with.",
    fix="Pass per-job data to the worker explicitly (in the queue item), and have "
    "the worker set its own ContextVars per unit of work.",
)
def task_snapshot_time():
    return app_running(worker_started_early)
