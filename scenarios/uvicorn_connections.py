"""Keep-alive connections in uvicorn: one request's context leaks into the next.

uvicorn starts each request in a task of its own, but a new task copies
whatever context is current when it is created.  Two paths create the next
request's task while the previous request's context is current:

* a request body larger than uvicorn's 64 KiB flow-control high-water mark
  pauses reading; the app's `receive()` resumes it from inside the request's
  task, so the socket's next read callback runs in that task's context;
* with pipelined requests, the next request is started from inside the
  previous one's final `send()`.

uvicorn 0.39 to 0.44 started every request in a fresh `Context()`; from 0.45
that is opt-in with `reset_contextvars=True` (CPython issue 140947 tracks
the underlying asyncio behaviour).  In process there is no connection, so
no leak.
"""

from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import ClientRequest, by_server, by_version, per_request, scenario

user: ContextVar = ContextVar("user", default=None)
LARGE_BODY = b"x" * (1024 * 1024)  # well past the 64 KiB high-water mark

LEAKS_ON_UVICORN = by_version("uvicorn", {"<0.39": "alice", ">=0.39,<0.45": None, ">=0.45": "alice"})


async def endpoint(request):
    probe("endpoint.before", user)
    await request.body()
    if "x-user" in request.headers:
        user.set(request.headers["x-user"])
    return PlainTextResponse("ok")


def app():
    return Starlette(routes=[Route("/", endpoint, methods=["GET", "POST"])])


WHY = (
    "The second request's task is created while the first request's context is "
    "current, so it starts with a copy of it: the first request's set is visible. "
    "uvicorn 0.39-0.44 gave every request a fresh Context(); from 0.45 you must "
    "ask for that with reset_contextvars=True."
)
FIX = (
    "Run uvicorn with --reset-contextvars (uvicorn >= 0.45; see reset-contextvars), "
    "and in any case set and reset per-request ContextVars in try/finally in "
    "middleware so nothing survives a request."
)


@scenario(
    "keepalive-large-body-leak",
    summary="After a >64 KiB request body, the next request on the connection inherits its context",
    tags=["uvicorn", "server", "leak"],
    requests=[ClientRequest("POST", headers={"x-user": "alice"}, body=LARGE_BODY), ClientRequest()],
    expect={"endpoint.before": {"user": per_request(None, by_server(asgi=None, uvicorn=LEAKS_ON_UVICORN))}},
    naive={"endpoint.before": {"user": None}},
    why=WHY,
    fix=FIX,
)
def keepalive_large_body_leak():
    return app()


@scenario(
    "pipelined-leak",
    summary="Pipelined requests: the second starts inside the first one's context",
    tags=["uvicorn", "server", "leak"],
    requests=[ClientRequest(headers={"x-user": "alice"}), ClientRequest()],
    pipelined=True,
    expect={"endpoint.before": {"user": per_request(None, by_server(asgi=None, uvicorn=LEAKS_ON_UVICORN))}},
    naive={"endpoint.before": {"user": None}},
    why=WHY,
    fix=FIX,
)
def pipelined_leak():
    return app()


@scenario(
    "reset-contextvars",
    summary="The fix: uvicorn's reset_contextvars=True starts every request in a fresh context",
    tags=["uvicorn", "server", "fix"],
    servers=["uvicorn"],
    requires={"uvicorn": ">=0.45"},
    server_options={"reset_contextvars": True},
    requests=[ClientRequest("POST", headers={"x-user": "alice"}, body=LARGE_BODY), ClientRequest()],
    expect={"endpoint.before": {"user": None}},
    why="With reset_contextvars, uvicorn creates each request's task in a new, empty "
    "Context, whatever context is current at that moment.",
    fix="Nothing to fix: this is the setting to use (uvicorn --reset-contextvars).",
)
def reset_contextvars():
    return app()
