"""Calling async code from a `def` endpoint with `anyio.from_thread.run`.

A FastAPI `def` endpoint runs in a worker thread, and reaches async helpers
(an async auth client, an async cache) through `anyio.from_thread.run`.
The helper runs on the event loop in a *copy* of the worker thread's
context: it sees what the endpoint set, and whatever it sets stays in that
copy.  Checked with anyio 3.4, 3.7 and 4.16: from 3.4 (which copies contexts
across threads both ways) the call is scheduled with
`loop.call_soon_threadsafe`, whose callback, and so the task it creates,
runs in a copy of the calling thread's context.

Sources: agronholm/anyio#363 ("to/from_thread and contextvars": the
behaviour differed between backends) and PR #390 (3.4: "Added propagation
of contextvars to/from threads"); fastapi/fastapi#953 for why sync code's
sets never come back in FastAPI.
"""

from contextvars import ContextVar

import anyio.from_thread
from fastapi import FastAPI

from ctxlab.probe import probe
from ctxlab.scenario import scenario

user: ContextVar = ContextVar("user", default="anonymous")


async def authenticate():
    """An async helper that resolves the user and sets it for the request."""
    probe("helper", user)
    user.set("alice")
    return "alice"


def endpoint_calling(helper_call):
    app = FastAPI()

    @app.get("/")
    def profile():  # a `def` endpoint: runs in a worker thread
        user.set("unverified")
        helper_call()
        probe("endpoint.after", user)
        return {}

    return app


@scenario(
    "from-thread-run",
    summary="anyio.from_thread.run from a def endpoint: the async helper's set never reaches the endpoint",
    tags=["anyio", "threads", "fastapi", "lost"],
    expect={"helper": {"user": "unverified"}, "endpoint.after": {"user": "unverified"}},
    naive={"endpoint.after": {"user": "alice"}},
    why="from_thread.run hands the coroutine to the event loop with "
    "call_soon_threadsafe; the task that runs it is created in a copy of the worker "
    "thread's context. The helper sees the endpoint's values, but its set lands in "
    "the copy, which is gone when from_thread.run returns.",
    fix="Return the value from the helper and set it in the sync code (see "
    "from-thread-run-return), or make the endpoint async and await the helper.",
)
def from_thread_run():
    return endpoint_calling(lambda: anyio.from_thread.run(authenticate))


@scenario(
    "from-thread-run-return",
    summary="The fix: the helper returns the user and the def endpoint sets it itself",
    tags=["anyio", "threads", "fastapi", "fix"],
    expect={"helper": {"user": "unverified"}, "endpoint.after": {"user": "alice"}},
    why="What crosses back from the event loop is the return value; a set made "
    "with it in the worker thread lands in the endpoint's own context.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def from_thread_run_return():
    return endpoint_calling(lambda: user.set(anyio.from_thread.run(authenticate)))
