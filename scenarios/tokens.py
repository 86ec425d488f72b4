"""Tokens: `reset(token)` undoes a `set`, but only once and only in its context."""

import asyncio
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import attempt, raised
from ctxlab.scenario import scenario

trace_id: ContextVar = ContextVar("trace_id", default=None)


def app_running(handler):
    async def endpoint(request):
        await handler()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


async def reset_in_child():
    token = trace_id.set("req-1")

    async def cleanup():
        attempt("child.reset", "reset", lambda: trace_id.reset(token))

    await asyncio.create_task(cleanup())


@scenario(
    "reset-wrong-context",
    summary="reset(token) in another context raises ValueError",
    tags=["tokens", "tasks", "errors"],
    expect={
        "child.reset": {
            "reset": raised(
                "ValueError", "<Token var=<ContextVar name='trace_id' default=None>> was created in a different Context"
            )
        }
    },
    naive={"child.reset": {"reset": None}},
    why="A token belongs to the context it was made in. The child task runs in a copy, "
    "so resetting there raises ValueError (not RuntimeError, whatever some guides say).",
    fix="Reset in the same scope that set, in try/finally, never across a task boundary.",
)
def reset_wrong_context():
    return app_running(reset_in_child)


async def reset_twice_handler():
    token = trace_id.set("req-1")
    attempt("first.reset", "reset", lambda: trace_id.reset(token))
    attempt("second.reset", "reset", lambda: trace_id.reset(token))


@scenario(
    "reset-twice",
    summary="Using the same token twice raises RuntimeError",
    tags=["tokens", "errors"],
    expect={
        "first.reset": {"reset": None},
        "second.reset": {
            "reset": raised(
                "RuntimeError", "<Token used var=<ContextVar name='trace_id' default=None>> has already been used once"
            )
        },
    },
    naive={"second.reset": {"reset": None}},
    why="A token is single use: after reset it is marked used, and a second reset raises RuntimeError.",
    fix="Keep one set/reset pair per scope (try/finally); never reset a token twice.",
)
def reset_twice():
    return app_running(reset_twice_handler)
