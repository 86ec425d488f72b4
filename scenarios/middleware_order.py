"""BaseHTTPMiddleware and pure ASGI middleware: the order of add_middleware.

The endpoint sets `context`; each middleware reads it once the inner app
has returned.  A BaseHTTPMiddleware runs everything inside it in a child
task, and a child task's changes never flow back to its parent.  So the
value reaches a middleware only if no BaseHTTPMiddleware sits between it
and the endpoint.

Remember: the middleware added *last* is the *outermost*.  `bad-then-shiny`
adds Bad first, so Shiny wraps Bad, and Bad cuts Shiny off from the value.
"""

from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import scenario

context: ContextVar = ContextVar("context", default=None)
ENDPOINT_VALUE = {"random_int": 42}  # fixed, so runs can be compared


class BadMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        probe("bad.after", context)
        return response


class ShinyMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            probe("shiny.after", context)


async def homepage(request):
    context.set(ENDPOINT_VALUE)
    probe("endpoint", context)
    return JSONResponse(ENDPOINT_VALUE)


def app_with(*middleware):
    app = Starlette(routes=[Route("/", homepage)])
    for cls in middleware:
        app.add_middleware(cls)
    return app


WHY_BAD = (
    "BaseHTTPMiddleware.__call__ runs call_next's downstream app in a new task "
    "(an anyio task group). The endpoint sets the variable in that child task's "
    "copy of the context; when call_next returns, dispatch is back in the parent "
    "task, whose context never saw the change."
)
FIX = (
    "Write the middleware that must read the value as pure ASGI middleware "
    "(a class with __call__(scope, receive, send)), and keep every "
    "BaseHTTPMiddleware outside it - or pass the value on request.state / scope "
    "instead of a ContextVar."
)


@scenario(
    "bad-then-shiny",
    summary="Bad added first, so Shiny (pure ASGI) wraps it: neither sees the endpoint's value",
    tags=["middleware", "starlette", "lost"],
    expect={
        "endpoint": {"context": ENDPOINT_VALUE},
        "bad.after": {"context": None},
        "shiny.after": {"context": None},
    },
    naive={"bad.after": {"context": ENDPOINT_VALUE}, "shiny.after": {"context": ENDPOINT_VALUE}},
    why=WHY_BAD + " Shiny is outside Bad, so it reads the parent task's context too: "
    "a BaseHTTPMiddleware cuts propagation for every middleware that wraps it.",
    fix=FIX,
)
def bad_then_shiny():
    return app_with(BadMiddleware, ShinyMiddleware)


@scenario(
    "shiny-then-bad",
    summary="Shiny added first, so it sits inside Bad: Shiny sees the value, Bad does not",
    tags=["middleware", "starlette", "lost"],
    expect={
        "endpoint": {"context": ENDPOINT_VALUE},
        "shiny.after": {"context": ENDPOINT_VALUE},
        "bad.after": {"context": None},
    },
    naive={"bad.after": {"context": ENDPOINT_VALUE}},
    why=WHY_BAD + " Shiny runs inside Bad's child task, the same task as the endpoint, so it does see the value.",
    fix=FIX,
)
def shiny_then_bad():
    return app_with(ShinyMiddleware, BadMiddleware)


@scenario(
    "bad-only",
    summary="A lone BaseHTTPMiddleware never sees what the endpoint set",
    tags=["middleware", "starlette", "lost"],
    expect={"endpoint": {"context": ENDPOINT_VALUE}, "bad.after": {"context": None}},
    naive={"bad.after": {"context": ENDPOINT_VALUE}},
    why=WHY_BAD,
    fix=FIX,
)
def bad_only():
    return app_with(BadMiddleware)


@scenario(
    "shiny-only",
    summary="A lone pure ASGI middleware sees what the endpoint set (the fix)",
    tags=["middleware", "starlette", "fix"],
    expect={"endpoint": {"context": ENDPOINT_VALUE}, "shiny.after": {"context": ENDPOINT_VALUE}},
    why="A pure ASGI middleware awaits the inner app in its own task: the endpoint's "
    "set happens in the same context, so it is visible after the await.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def shiny_only():
    return app_with(ShinyMiddleware)
