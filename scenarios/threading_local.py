"""threading.local vs ContextVar as a request-ID store, under concurrency.

One event loop runs every request on one thread, so a `threading.local`
is a single slot shared by all of them: whichever request wrote last wins.
A ContextVar gives each request's task its own slot.
"""

import asyncio
import threading
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note
from ctxlab.scenario import Varies, scenario

request_id: ContextVar = ContextVar("request_id")


@scenario(
    "threading-local-interleave",
    summary="N concurrent requests: threading.local mixes request IDs, ContextVar never does",
    tags=["threads", "asyncio", "concurrency", "leak"],
    concurrency=50,
    expect={
        "tally": {
            # Every request writes before any reads, so all but the last
            # writer read someone else's ID.
            "threading.local foreign": Varies("concurrency - 1", lambda env: env.concurrency - 1),
            "ContextVar foreign": 0,
        }
    },
    naive={"tally": {"threading.local foreign": 0}},
    why="asyncio multiplexes every request onto one OS thread. threading.local has one "
    "slot per thread, so at each await another request can overwrite it; a ContextVar "
    "lives in each task's own context.",
    fix="Replace threading.local with a ContextVar in async code.",
)
def threading_local_interleave(concurrency):
    local = threading.local()
    tally = {"threading.local foreign": 0, "ContextVar foreign": 0, "arrived": 0, "done": 0}
    everyone_in = asyncio.Event()

    async def endpoint(request):
        mine = request.headers["x-ctxlab-request"]
        local.request_id = mine
        request_id.set(mine)
        # Any await lets other requests run; waiting until all of them are
        # in flight (as under load) makes the outcome the same on any server.
        tally["arrived"] += 1
        if tally["arrived"] == concurrency:
            everyone_in.set()
        await everyone_in.wait()
        tally["threading.local foreign"] += local.request_id != mine
        tally["ContextVar foreign"] += request_id.get() != mine
        tally["done"] += 1
        if tally["done"] == concurrency:  # the last request reports for all
            note("tally", "threading.local foreign", tally["threading.local foreign"])
            note("tally", "ContextVar foreign", tally["ContextVar foreign"])
        return PlainTextResponse(mine)

    return Starlette(routes=[Route("/", endpoint)])
