"""Where FastAPI runs your code: `def` goes to a thread-pool copy.

FastAPI runs `async def` dependencies and endpoints in the request's task,
and plain `def` ones through `run_in_threadpool`, which runs them in a
*copy* of the request's context.  A set inside the copy stays in the copy.
"""

from contextvars import ContextVar

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from ctxlab.probe import UNSET, attempt, probe, raised
from ctxlab.scenario import ClientRequest, scenario

tenant: ContextVar = ContextVar("tenant", default=None)
session: ContextVar = ContextVar("session")
stage: ContextVar = ContextVar("stage")


class ReadAfterMiddleware:
    """Pure ASGI: reads the var once everything inside has run."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            probe("middleware.after", tenant)


def sync_tenant():
    tenant.set("acme")
    probe("dependency", tenant)


async def async_tenant():
    tenant.set("acme")
    probe("dependency", tenant)


def tenant_app(dependency):
    app = FastAPI()

    @app.get("/", dependencies=[Depends(dependency)])
    async def endpoint():
        probe("endpoint", tenant)
        return {}

    return app


@scenario(
    "sync-dependency",
    summary="A `def` dependency sets a var; the endpoint never sees it",
    tags=["fastapi", "dependency", "threads", "lost"],
    expect={"dependency": {"tenant": "acme"}, "endpoint": {"tenant": None}},
    naive={"endpoint": {"tenant": "acme"}},
    why="FastAPI calls a `def` dependency through run_in_threadpool, which runs it in "
    "a worker thread inside a copy of the request's context. The set lands in that "
    "copy, which is thrown away when the call returns.",
    fix="Make the dependency `async def` (see async-dependency), or return the value "
    "and take it as a parameter instead of a ContextVar.",
)
def sync_dependency():
    return tenant_app(sync_tenant)


@scenario(
    "async-dependency",
    summary="The fix: an `async def` dependency's set reaches the endpoint",
    tags=["fastapi", "dependency", "fix"],
    expect={"dependency": {"tenant": "acme"}, "endpoint": {"tenant": "acme"}},
    why="`async def` dependencies run in the request's own task and context, the same one the endpoint runs in.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def async_dependency():
    return tenant_app(async_tenant)


@scenario(
    "sync-endpoint",
    summary="A `def` endpoint sets a var; the middleware around it never sees it",
    tags=["fastapi", "threads", "middleware", "lost"],
    expect={"endpoint": {"tenant": "acme"}, "middleware.after": {"tenant": None}},
    naive={"middleware.after": {"tenant": "acme"}},
    why="A `def` endpoint runs in a thread-pool copy of the context, even under pure "
    "ASGI middleware: nothing set there comes back to the request's task.",
    fix="Make the endpoint `async def` (offload only the blocking part), or hand the value back through request.state.",
)
def sync_endpoint():
    app = FastAPI()

    @app.get("/")
    def endpoint():
        tenant.set("acme")
        probe("endpoint", tenant)
        return {}

    app.add_middleware(ReadAfterMiddleware)
    return app


def sync_session():
    token = session.set("sync")
    yield
    attempt("sync.teardown", "reset", lambda: session.reset(token))


async def async_session():
    token = session.set("async")
    yield
    attempt("async.teardown", "reset", lambda: session.reset(token))


@scenario(
    "yield-dependency-reset",
    summary="reset(token) in a `def` yield dependency's teardown raises ValueError",
    tags=["fastapi", "dependency", "threads", "tokens"],
    requests=[ClientRequest(path="/sync"), ClientRequest(path="/async")],
    expect={
        "sync.teardown": {
            "reset": raised("ValueError", "<Token var=<ContextVar name='session'>> was created in a different Context")
        },
        "async.teardown": {"reset": None},
    },
    naive={"sync.teardown": {"reset": None}},
    why="FastAPI enters a `def` generator dependency with one run_in_threadpool call "
    "and exits it with another. Each call runs in its own fresh copy of the context, "
    "so the token made in the first copy does not belong to the second. The async "
    "version enters and exits in the request's own context.",
    fix="Write yield dependencies that manage ContextVars as `async def`, or do not "
    "reset: the copy the value lives in is discarded anyway.",
)
def yield_dependency_reset():
    app = FastAPI()

    @app.get("/sync", dependencies=[Depends(sync_session)])
    async def with_sync():
        return {}

    @app.get("/async", dependencies=[Depends(async_session)])
    async def with_async():
        return {}

    return app


class Refused(Exception):
    pass


class TimingMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        return await call_next(request)


@scenario(
    "exception-handler",
    summary="A custom exception handler sees the endpoint's var; the 500 handler does not",
    tags=["fastapi", "starlette", "errors", "middleware", "lost"],
    requests=[ClientRequest(path="/refused", status=418), ClientRequest(path="/crash", status=500)],
    expect={"refused.handler": {"stage": "in endpoint"}, "500.handler": {"stage": UNSET}},
    naive={"500.handler": {"stage": "in endpoint"}},
    why="Handlers for specific exceptions run in ExceptionMiddleware, the innermost "
    "layer, in the endpoint's task. The handler for 500 / Exception runs in "
    "ServerErrorMiddleware, the outermost layer: outside the BaseHTTPMiddleware, in "
    "the parent task, where the endpoint's set never arrived.",
    fix="Keep error-reporting context on request.state, or report from a specific "
    "exception handler; avoid BaseHTTPMiddleware between the endpoint and the 500 handler.",
)
def exception_handler():
    app = FastAPI()

    @app.get("/refused")
    async def refused():
        stage.set("in endpoint")
        raise Refused()

    @app.get("/crash")
    async def crash():
        stage.set("in endpoint")
        raise RuntimeError("boom")

    @app.exception_handler(Refused)
    async def on_refused(request, exc):
        probe("refused.handler", stage)
        return JSONResponse({"error": "refused"}, status_code=418)

    @app.exception_handler(Exception)
    async def on_crash(request, exc):
        probe("500.handler", stage)
        return JSONResponse({"error": "internal"}, status_code=500)

    app.add_middleware(TimingMiddleware)
    return app
