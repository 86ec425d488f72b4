"""asyncio helpers that await a coroutine for you: which of them keep its sets.

`await coro` runs the coroutine in the caller's task, so a `set` inside it
stays visible afterwards.  Helpers that wrap the coroutine in a task
(`gather`, `shield`, a task group, and `wait_for` before Python 3.12) run it
in a copy of the context, and its sets vanish when they return.

Sources: python/cpython#102123 ("Unable to access same context inside
asyncio.wait_for", closed as not planned, on 3.10) and MagicStack/contextvars#14;
the change came with python/cpython#96764 / PR #98518, which rebuilt
`wait_for` on `asyncio.timeout` for 3.12 (not backported).

Surprise found while checking 3.10 and 3.11: `wait_for(coro, None)` keeps
the set there too, because without a timeout those versions simply
`return await fut` on the bare coroutine; only a real timeout wraps it in
a task (`ensure_future`).
"""

import asyncio
import sys
from contextvars import ContextVar

import anyio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import Varies, scenario

tenant: ContextVar = ContextVar("tenant", default=None)


async def select_tenant(helper, name):
    """What a helper coroutine does: look something up, set it for the request."""
    tenant.set(name)
    probe(f"in.{helper}", tenant)  # shows which task ran it


async def in_task_group(func, *args):
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as group:
            group.create_task(func(*args))
    else:  # asyncio has no task group before 3.11; anyio's behaves the same
        async with anyio.create_task_group() as group:
            group.start_soon(func, *args)


async def await_through_helpers(request):
    # Each helper gets its own value; a probe seeing an earlier one shows
    # that the helper's set was lost.
    await asyncio.gather(select_tenant("gather", "set in gather"))
    probe("after.gather", tenant)
    await asyncio.shield(select_tenant("shield", "set in shield"))
    probe("after.shield", tenant)
    await in_task_group(select_tenant, "task_group", "set in task group")
    probe("after.task_group", tenant)
    await asyncio.wait_for(select_tenant("wait_for", "set in wait_for"), timeout=5)
    probe("after.wait_for", tenant)
    await asyncio.wait_for(select_tenant("wait_for_no_timeout", "set in wait_for(timeout=None)"), timeout=None)
    probe("after.wait_for_no_timeout", tenant)
    return PlainTextResponse("ok")


WAIT_FOR_KEEPS_IT = sys.version_info >= (3, 12)


@scenario(
    "wait-for-set",
    summary="A set inside asyncio.wait_for is lost on 3.10/3.11, kept from 3.12; gather, shield, task groups lose it",
    tags=["asyncio", "tasks", "lost", "python-version"],
    expect={
        "in.gather": {"tenant": "set in gather"},
        "in.shield": {"tenant": "set in shield"},
        "in.task_group": {"tenant": "set in task group"},
        "in.wait_for": {"tenant": "set in wait_for"},
        "in.wait_for_no_timeout": {"tenant": "set in wait_for(timeout=None)"},
        "after.gather": {"tenant": None},
        "after.shield": {"tenant": None},
        "after.task_group": {"tenant": None},
        "after.wait_for": {
            "tenant": Varies(
                'python>=3.12: "set in wait_for"; else null',
                lambda env: "set in wait_for" if WAIT_FOR_KEEPS_IT else None,
            )
        },
        "after.wait_for_no_timeout": {"tenant": "set in wait_for(timeout=None)"},
    },
    naive={
        "after.gather": {"tenant": "set in gather"},
        "after.shield": {"tenant": "set in shield"},
        "after.task_group": {"tenant": "set in task group"},
        "after.wait_for": {"tenant": "set in wait_for"},
    },
    why="gather, shield and task groups run the coroutine in a new task, which gets a "
    "copy of the caller's context: its sets stay in the copy. wait_for did the same "
    "until Python 3.11 whenever a timeout was given; from 3.12 it is built on "
    "asyncio.timeout and awaits the coroutine in the caller's task, so the set "
    "survives. Code that works on 3.12 silently loses the value on 3.11.",
    fix="Return the value from the coroutine and set it in the caller; or put the "
    "timeout around a plain await (anyio.fail_after, asyncio.timeout on 3.11+): "
    "see wait-for-set-timeout-scope.",
)
def wait_for_set():
    return Starlette(routes=[Route("/", await_through_helpers)])


async def await_under_timeout_scope(request):
    with anyio.fail_after(5):
        await select_tenant("fail_after", "set under fail_after")
    probe("after.fail_after", tenant)
    return PlainTextResponse("ok")


@scenario(
    "wait-for-set-timeout-scope",
    summary="The fix: a timeout scope around a plain await keeps the set on every Python",
    tags=["asyncio", "fix"],
    expect={
        "in.fail_after": {"tenant": "set under fail_after"},
        "after.fail_after": {"tenant": "set under fail_after"},
    },
    why="A cancel scope (anyio.fail_after, or asyncio.timeout from 3.11) arms a timer "
    "around the current task instead of starting a new one, so the coroutine runs "
    "in the caller's context.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def wait_for_set_timeout_scope():
    return Starlette(routes=[Route("/", await_under_timeout_scope)])
