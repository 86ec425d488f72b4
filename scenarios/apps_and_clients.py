"""The app's lifespan, and httpx's ASGITransport used bare in a test."""

from contextlib import asynccontextmanager
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import UNSET, note, probe
from ctxlab.scenario import ClientRequest, per_request, scenario

db: ContextVar = ContextVar("db", default=None)
user: ContextVar = ContextVar("user")


@asynccontextmanager
async def lifespan(app):
    db.set("pool")
    probe("startup", db)
    yield {"db": "pool"}  # lifespan state: copied into every request


async def read_db(request):
    probe("endpoint", db)
    note("endpoint", "request.state.db", getattr(request.state, "db", UNSET))
    return PlainTextResponse("ok")


@scenario(
    "lifespan-var",
    summary="A value set during startup is not visible to requests; lifespan state is",
    tags=["starlette", "lifespan", "lost"],
    lifespan=True,
    expect={"startup": {"db": "pool"}, "endpoint": {"db": None, "request.state.db": "pool"}},
    naive={"endpoint": {"db": "pool"}},
    why="The server runs the lifespan in a task of its own; requests are started "
    "from the server's connection handling, never from that task, so they do not "
    "inherit its context.",
    fix="Yield a state dict from the lifespan and read request.state in requests.",
)
def lifespan_var():
    return Starlette(routes=[Route("/", read_db)], lifespan=lifespan)


async def login(request):
    probe("endpoint.before", user)
    if "x-user" in request.headers:
        user.set(request.headers["x-user"])
    return PlainTextResponse("ok")


LOGIN_THEN_ANONYMOUS = [ClientRequest(headers={"x-user": "alice"}), ClientRequest()]


@scenario(
    "asgi-transport-leak",
    summary="httpx.ASGITransport runs the app in the caller's task: values leak between requests",
    tags=["httpx", "testing", "leak"],
    requests=LOGIN_THEN_ANONYMOUS,
    task_per_request=False,
    servers=["asgi"],  # the leak is the in-process transport's own
    expect={"endpoint.before": {"user": per_request(UNSET, "alice")}},
    naive={"endpoint.before": {"user": UNSET}},
    why="ASGITransport awaits the app inline, in the task that sent the request, so "
    "the app's sets land in the caller's context: in the test itself, and in every "
    "later request sent from it. A real server starts each request in a fresh task.",
    fix="In tests, send each request from its own task (see "
    "asgi-transport-task-per-request) or run the app under a real server.",
)
def asgi_transport_leak():
    return Starlette(routes=[Route("/", login)])


@scenario(
    "asgi-transport-task-per-request",
    summary="The fix: each request sent from its own fresh task, as a server would",
    tags=["httpx", "testing", "fix"],
    requests=LOGIN_THEN_ANONYMOUS,
    expect={"endpoint.before": {"user": UNSET}},
    why="A fresh task with an empty context per request isolates requests the way a server does.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def asgi_transport_task_per_request():
    return Starlette(routes=[Route("/", login)])
