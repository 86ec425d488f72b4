"""Async generators have no context of their own.

An async generator runs each step in the context of whoever awaits that
step (PEP 568, which would have given generators their own context, was
deferred).  Two consequences that users hit:

- a `set` inside the generator lands in the iterating code's context and
  stays there (jsbueno/extracontext#4);
- a generator abandoned half-way (an early `break`) is not closed by the
  `async for`: when it is garbage-collected, asyncio's asyncgen finalizer
  hook (`BaseEventLoop._asyncgen_finalizer_hook`) schedules `aclose()` with
  `call_soon_threadsafe(create_task, ...)`, so its `finally` runs later, in a
  new task, in a copy of the context.  A `reset(token)` there raises
  ValueError.  A span context manager held across a `yield` is the common
  case: OpenTelemetry's `detach` catches that ValueError and logs "Failed to
  detach context" (open-telemetry/opentelemetry-python#2606,
  google/adk-python#4894 and #6559, pydantic/logfire#1424), and the span
  stays current in the request's context.
"""

import asyncio
from contextlib import aclosing, contextmanager
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import attempt, probe, raised
from ctxlab.scenario import scenario

span: ContextVar = ContextVar("span", default=None)
page: ContextVar = ContextVar("page", default=None)


def app_running(handler):
    async def endpoint(request):
        await handler()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


async def pages():
    for number in (1, 2):
        page.set(number)  # e.g. a pagination helper recording where it is
        yield number


async def iterate_pages():
    page.set("request's page")
    async for _ in pages():
        pass
    probe("endpoint.after", page)


@scenario(
    "asyncgen-set-leaks",
    summary="A set inside an async generator shows up in the code that iterates it",
    tags=["asyncio", "generators", "leak"],
    expect={"endpoint.after": {"page": 2}},
    naive={"endpoint.after": {"page": "request's page"}},
    why="A generator's body runs in the context of the code that drives it: there "
    "is no copy per generator, as there is per task. The generator's last set is "
    "still there when the loop ends, and overwrote the caller's own value.",
    fix="Inside a generator, set and reset around the work between two yields "
    "(never leave a set standing across a yield), or return values instead of "
    "setting ContextVars; see asyncgen-set-reset-before-yield.",
)
def asyncgen_set_leaks():
    return app_running(iterate_pages)


async def pages_reset_before_yield():
    for number in (1, 2):
        token = page.set(number)
        try:
            fetched = number  # the work that needs the var
        finally:
            page.reset(token)
        yield fetched


async def iterate_pages_reset():
    page.set("request's page")
    async for _ in pages_reset_before_yield():
        pass
    probe("endpoint.after", page)


@scenario(
    "asyncgen-set-reset-before-yield",
    summary="The fix: a generator that resets before each yield leaves the caller's value alone",
    tags=["asyncio", "generators", "fix"],
    expect={"endpoint.after": {"page": "request's page"}},
    why="Each set is undone before control returns to the caller, so the caller's "
    "context is unchanged between steps and after the loop.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def asyncgen_set_reset_before_yield():
    return app_running(iterate_pages_reset)


@contextmanager
def current_span(name, closed):
    """Like OpenTelemetry's start_as_current_span: attach on enter, detach on exit."""
    token = span.set(name)
    try:
        yield
    finally:
        probe("span.exit", span)
        attempt("span.exit", "reset", lambda: span.reset(token))  # OpenTelemetry: "Failed to detach context"
        closed.set()


async def rows(closed):
    with current_span("query", closed):
        for row in (1, 2, 3):
            yield row


async def first_row_then_break():
    closed = asyncio.Event()
    async for _ in rows(closed):
        break
    # The generator is unreachable now; asyncio closes it in a task of its own.
    await closed.wait()
    probe("endpoint.after", span)


@scenario(
    "asyncgen-finalized-elsewhere",
    summary="An async generator left early is closed in another task: its reset raises ValueError",
    tags=["asyncio", "generators", "tokens", "tracing", "errors"],
    expect={
        "span.exit": {
            "span": "query",
            "reset": raised(
                "ValueError", "<Token var=<ContextVar name='span' default=None>> was created in a different Context"
            ),
        },
        "endpoint.after": {"span": "query"},
    },
    naive={"span.exit": {"reset": None}, "endpoint.after": {"span": None}},
    why="Breaking out of `async for` does not close the generator. When it is "
    "garbage-collected, asyncio's finalizer hook schedules its aclose() as a new "
    "task, in a copy of the context: the context manager's exit runs there, and the "
    "token, made in the request's context, cannot be reset in the copy. The span "
    "(or any var set this way) stays current in the request for the rest of it.",
    fix="Close the generator where it was iterated: `async with "
    "contextlib.aclosing(rows()) as it: async for row in it: ...` (Python 3.10+); "
    "see asyncgen-finalized-elsewhere-aclosing.",
)
def asyncgen_finalized_elsewhere():
    return app_running(first_row_then_break)


async def first_row_then_aclose():
    closed = asyncio.Event()
    async with aclosing(rows(closed)) as iterator:
        async for _ in iterator:
            break
    probe("endpoint.after", span)


@scenario(
    "asyncgen-finalized-elsewhere-aclosing",
    summary="The fix: contextlib.aclosing closes the generator in the task that iterated it",
    tags=["asyncio", "generators", "tokens", "fix"],
    expect={"span.exit": {"span": "query", "reset": None}, "endpoint.after": {"span": None}},
    why="aclosing awaits aclose() when the block exits, in the request's own task and "
    "context, so the exit code resets the token where it was made.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def asyncgen_finalized_elsewhere_aclosing():
    return app_running(first_row_then_aclose)
