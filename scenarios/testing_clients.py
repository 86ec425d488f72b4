"""Starlette's TestClient: the test's context flows into the app, never back.

`TestClient` runs the app on an event loop in a portal thread (anyio's
`BlockingPortal`) and sends each request with `portal.call(...)`.  anyio
schedules that call with `loop.call_soon_threadsafe`, which captures the
*calling* thread's context, and the task that runs the request is created
inside that callback: the app runs in a copy of the test's context.  So a
ContextVar the test (or a sync fixture) set is visible to the app, where a
real server would never pass it (uvicorn 0.39 to 0.44 even start every
request in an empty context), and what the app sets stays in the portal.

Checked with Starlette 0.27 / anyio 3.4 and 3.7 and with Starlette 1.10 /
anyio 4.16: the same on all of them (anyio 3.x: `run_sync_from_thread` ->
`call_soon_threadsafe`; 4.x: the same path through `_spawn_task_from_thread`).

Sources: atlanhq/application-sdk#1615 (a ContextVar set at start-up was
None in route handlers under uvicorn, which starts each request in a fresh
context: the half of this pitfall that shows in production);
skypilot-org/skypilot#10830 (a ContextVar set in one
test leaking into later ones); agronholm/anyio#363 and PR #390 (how
from-thread calls propagate contexts).
"""

import asyncio
import warnings
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note
from ctxlab.scenario import scenario

settings: ContextVar = ContextVar("settings", default=None)
user: ContextVar = ContextVar("user", default="anonymous")


async def app_endpoint(request):
    """The app under test: reports what it sees, then sets the user."""
    seen = settings.get()
    user.set("set by the app")
    return JSONResponse({"settings": seen})


def the_test(client_class):
    """A sync test, as pytest runs it: configure, request, check."""
    settings.set("configured by the test")
    client = client_class(Starlette(routes=[Route("/", app_endpoint)]))
    response = client.get("/")
    note("app", "settings", response.json()["settings"])
    note("test.after", "user", user.get())


@scenario(
    "testclient-context",
    summary="TestClient runs the app in a copy of the test's context: the test's values reach the app, the app's never come back",
    tags=["testing", "starlette", "threads", "leak"],
    expect={"app": {"settings": "configured by the test"}, "test.after": {"user": "anonymous"}},
    naive={"app": {"settings": None}, "test.after": {"user": "set by the app"}},
    why="Each TestClient request is a portal.call from the test's thread; anyio "
    "schedules it with call_soon_threadsafe, which runs the callback (and so creates "
    "the request's task) in a copy of the caller's context. A value the test or a "
    "sync fixture set is visible to the app, so code that depends on it passes the "
    "tests and finds the variable unset under a real server. The copy also means "
    "the app's own sets never reach the test.",
    fix="Don't let tests configure the app through ContextVars: pass configuration "
    "through app.state or lifespan state, set request-scoped values in middleware, "
    "and assert on what the app returns, not on ContextVars after the call.",
)
def testclient_context():
    # Starlette 1.x warns that it wants httpx2 instead of httpx; that choice is
    # not the point here, and the warning would clutter the run's output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    async def run_the_test(request):
        await asyncio.to_thread(the_test, TestClient)  # a sync test runs in a thread of its own
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", run_the_test)])
