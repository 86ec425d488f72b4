"""asgiref's `sync_to_async`: sets come back, tokens do not.

`asyncio.to_thread` and Starlette's `run_in_threadpool` run a sync function
in a copy of the caller's context and throw the copy away.  asgiref's
`sync_to_async` (what Django, Channels and many "sync helpers" in ASGI apps
use) also runs it in a copy, but then writes every variable the function
changed back into the caller's context.  So a value set in sync code *does*
reach the async caller, the opposite of `to-thread`.  What does not come
back is the copy itself: a token made in one `sync_to_async` call belongs
to that call's copy, and resetting it in a later call (a `process_request`
/ `process_response` pair, each wrapped separately) raises ValueError.

Sources: django/asgiref#148 (propagating changes "upstream" in SyncToAsync,
for Elastic APM), #171 (the same for async_to_sync), #267 ("How to reset
ContextVar in separate sync_to_async calls", from OpenTelemetry's Django
middleware, open), #534 (the same question in 2025, open); Starlette
declined to copy back in encode/starlette#1258 (fastapi/fastapi#953).
"""

from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note, probe, raised
from ctxlab.scenario import scenario

user: ContextVar = ContextVar("user", default="anonymous")


def process_request():
    """A sync middleware hook: sets the user, returns the token to reset later."""
    return user.set("alice")


def process_response(token):
    user.reset(token)


async def endpoint(request):
    from asgiref.sync import sync_to_async  # imported here: the module loads without asgiref

    await run_in_threadpool(process_request)
    probe("after.run_in_threadpool", user)
    token = await sync_to_async(process_request)()
    probe("after.sync_to_async", user)
    try:
        await sync_to_async(process_response)(token)
        outcome = None
    except ValueError as exc:  # the exception is the observation
        outcome = exc
    note("process_response.reset", "reset", outcome)
    return PlainTextResponse("ok")


@scenario(
    "sync-to-async-context",
    summary="asgiref's sync_to_async copies sets back to the caller, unlike to_thread; a token reset in a second call raises",
    tags=["asgiref", "threads", "tokens", "errors"],
    requires={"asgiref": ">=3.5"},
    expect={
        "after.run_in_threadpool": {"user": "anonymous"},
        "after.sync_to_async": {"user": "alice"},
        "process_response.reset": {
            "reset": raised(
                "ValueError",
                "<Token var=<ContextVar name='user' default='anonymous'>> was created in a different Context",
            )
        },
    },
    naive={"after.sync_to_async": {"user": "anonymous"}, "process_response.reset": {"reset": None}},
    why="sync_to_async runs the function in a copy of the caller's context and, when "
    "it returns, sets every variable the copy changed on the caller (asgiref's "
    "_restore_context), so the user set in sync code is visible afterwards; "
    "run_in_threadpool drops it. The second call runs in a new copy, and a token "
    "can only be reset in the context that created it: ValueError.",
    fix="Do the set and its reset in one place: both inside one sync call (try/finally), "
    "or both on the async side around the sync calls. Never carry a token across "
    "two sync_to_async calls.",
)
def sync_to_async_context():
    return Starlette(routes=[Route("/", endpoint)])
