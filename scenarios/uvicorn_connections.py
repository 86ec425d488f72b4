"""Keep-alive connections in uvicorn: one request's context leaks into the next.

uvicorn starts each request in a task of its own, but a new task copies
whatever context is current when it is created.  Two paths create the next
request's task while an earlier request's context is current:

* A request body past uvicorn's 64 KiB high-water mark pauses reading.  On
  the asyncio loop, `transport.resume_reading()` registers the socket's read
  callback with a copy of the context current at that call.  When reading is
  still paused as the response completes, the resume that counts is the one
  in `on_response_complete`, which the app's final `send()` calls from inside
  the request's task: from then on every read on that connection, and so
  every later request's task, starts in a copy of that request's context.
  (A value set *before* the body is read leaks through the resume in
  `receive()` the same way.)  uvloop's transports do not capture the caller's
  context, and from Python 3.15 asyncio's transports keep the context of the
  connection (python/cpython#140947, fixed by python/cpython#141158).
  Sources: uvicorn #2167 (Kludex/uvicorn), CPython issue 140947.
* With pipelined requests, uvicorn starts the next queued request from
  `on_response_complete` too, on every loop and Python.

uvicorn 0.39 to 0.44 started every request in a fresh `Context()`
(Kludex/uvicorn#2742); 0.45 reverted that (#2911) and made it opt-in with
`reset_contextvars=True` (#2912).  0.39 to 0.44 applied it to the h11
protocol and to the httptools protocol's first request only: the httptools
pipeline path still leaks there.

Measured on a real uvicorn with a from-scratch app (tests/test_independent.py
holds the repros): on the asyncio loop, Python 3.10 to 3.14, reading is still
paused at the end when more than 64 KiB of the body arrive after the app's
last-but-one `receive()`, so it depends on how TCP hands the body over.  On a
fresh connection with the client on the server's loop (as ctxlab's is), a
300 KiB body leaked every time and a 100 KiB body never did; once the
connection's window has grown, a 300 KiB body can arrive as 256 KiB + 44 KiB
and leak nothing.  A client in another process let the first connection of a
cold server escape about one time in three.  None leaked on uvloop, none on
Python 3.15.  hypercorn and granian start each request in a copy of the
server's own context and leak on neither path.  In process there is no
connection.
"""

import asyncio
import sys
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note, probe
from ctxlab.scenario import ClientRequest, Varies, per_request, scenario

user: ContextVar = ContextVar("user", default=None)
LARGE_BODY = b"x" * (300 * 1024)  # on a fresh connection, reading is still paused at the end
SMALL_BODY = b"x" * (100 * 1024)  # past the mark too, but read to the end before the response


def loop_name() -> str:
    """`asyncio` or `uvloop`: the package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def endpoint(request):
    probe("endpoint.before", user)
    note("endpoint.before", "loop", loop_name())
    await request.body()
    if "x-user" in request.headers:
        user.set(request.headers["x-user"])
    return PlainTextResponse("ok")


def app():
    return Starlette(routes=[Route("/", endpoint, methods=["GET", "POST"])])


def fresh_context_per_request(env) -> bool:
    """uvicorn 0.39-0.44: every h11 request, and the first of each httptools batch."""
    return env.server == "uvicorn" and env.has("uvicorn", ">=0.39,<0.45")


def body_leaks(env) -> bool:
    return (
        env.server == "uvicorn"
        and env.loop == "asyncio"
        and sys.version_info < (3, 15)
        and not fresh_context_per_request(env)
    )


def pipeline_leaks(env) -> bool:
    return env.server == "uvicorn" and (not fresh_context_per_request(env) or env.http == "httptools")


def leaked_if(leaks, describe: str) -> Varies:
    return Varies(describe, lambda env: "alice" if leaks(env) else None)


BODY_LEAK = leaked_if(
    body_leaks, "alice on uvicorn with the asyncio loop on Python < 3.15, except uvicorn 0.39-0.44; else null"
)
PIPELINE_LEAK = leaked_if(pipeline_leaks, "alice on uvicorn, except 0.39-0.44 with h11; else null")
RUNNING_LOOP = Varies("the loop the run chose (asyncio in process)", lambda env: env.loop)

WHY_BODY = (
    "Reading was paused by the 300 KiB body and is resumed by on_response_complete, "
    "called from the app's last send() inside request 1's task. asyncio registers "
    "the socket's read callback in a copy of the context current then, so every "
    "later request on the connection starts with request 1's value. Request 3's "
    "100 KiB body was read to the end before its response, nothing was paused, so "
    "its own value never reaches request 4: the connection keeps request 1's. uvloop "
    "does not capture the context there, and Python 3.15's asyncio keeps the "
    "connection's own. uvicorn 0.39-0.44 gave every request a fresh Context()."
)
WHY_PIPELINE = (
    "uvicorn starts the next pipelined request from on_response_complete, called from "
    "the previous request's last send(): the new task copies that request's context. "
    "uvicorn 0.39-0.44 started h11 requests in a fresh Context(), but not the queued "
    "requests of its httptools protocol."
)
FIX = (
    "Run uvicorn with --reset-contextvars (uvicorn >= 0.45; see reset-contextvars), "
    "and in any case set and reset per-request ContextVars in try/finally in "
    "middleware so nothing survives a request."
)


@scenario(
    "keepalive-large-body-leak",
    summary="After a 300 KiB request body, later requests on the connection inherit its context (asyncio loop)",
    tags=["uvicorn", "server", "leak"],
    requests=[
        ClientRequest("POST", headers={"x-user": "alice"}, body=LARGE_BODY),
        ClientRequest(),
        ClientRequest("POST", headers={"x-user": "bob"}, body=SMALL_BODY),
        ClientRequest(),
    ],
    expect={"endpoint.before": {"user": per_request(None, BODY_LEAK), "loop": RUNNING_LOOP}},
    naive={"endpoint.before": {"user": None}},
    why=WHY_BODY,
    fix=FIX,
)
def keepalive_large_body_leak():
    return app()


@scenario(
    "pipelined-leak",
    summary="Pipelined requests: the next one starts inside the previous one's context",
    tags=["uvicorn", "server", "leak"],
    requests=[ClientRequest(headers={"x-user": "alice"}), ClientRequest(), ClientRequest()],
    pipelined=True,
    expect={"endpoint.before": {"user": per_request(None, PIPELINE_LEAK), "loop": RUNNING_LOOP}},
    naive={"endpoint.before": {"user": None}},
    why=WHY_PIPELINE,
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
    expect={"endpoint.before": {"user": None, "loop": RUNNING_LOOP}},
    why="With reset_contextvars, uvicorn creates each request's task in a new, empty "
    "Context, whatever context is current at that moment.",
    fix="Nothing to fix: this is the setting to use (uvicorn --reset-contextvars).",
)
def reset_contextvars():
    return app()


# Set while this module is imported, outside any request: configuration a
# real app sets at import or before calling serve().
region: ContextVar = ContextVar("region", default=None)
region.set("eu-west")


async def show_region(request):
    probe("endpoint", region)
    return PlainTextResponse("ok")


@scenario(
    "outer-context-hidden",
    summary="uvicorn 0.39-0.44 hide values set at import or before serve() from every request",
    tags=["uvicorn", "server", "lost"],
    servers=["uvicorn", "hypercorn", "granian"],
    requests=[ClientRequest(), ClientRequest()],
    expect={
        "endpoint": {
            "region": Varies(
                "null on uvicorn 0.39-0.44; else eu-west",
                lambda env: None if fresh_context_per_request(env) else "eu-west",
            )
        }
    },
    naive={"endpoint": {"region": "eu-west"}},
    why="Kludex/uvicorn#2742 (0.39) started every request in an empty Context() to "
    "stop one request leaking into the next (CPython issue 140947). That also hid "
    "everything set outside requests: at import, before serve(), by instrumentation. "
    "#2911 reverted it in 0.45 and #2912 made it opt-in (reset_contextvars). "
    "hypercorn and granian start requests in a copy of the server's context.",
    fix="Do not rely on module-level ContextVar values reaching requests: keep "
    "configuration in app.state or a plain global, or set it per request in middleware "
    "(or in the lifespan state, which every server hands to requests).",
)
def outer_context_hidden():
    return Starlette(routes=[Route("/", show_region)])
