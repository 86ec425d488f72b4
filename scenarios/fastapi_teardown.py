"""When a FastAPI yield dependency's teardown runs, and who still sees its value.

A yield dependency that sets a ContextVar and resets it after `yield`
scopes the value to "the request".  But FastAPI has moved the teardown
around the response three times, and whatever runs after the teardown sees
the variable reset:

- 0.74 (fastapi/fastapi#4575) moved the exit stack inside
  ExceptionMiddleware, so the teardown runs *before* exception handlers
  (a bare script: 0.73.0's handler still sees the value, 0.74.0's does
  not).  That holds on every version ctxlab supports (0.95.2 and later).
- 0.106 (fastapi/fastapi#10831) closes the exit stack as the endpoint
  returns, before the response is sent: background tasks see the value
  reset.
- 0.118 (fastapi/fastapi#14099) closes it after the response (background
  tasks included) has been sent, as before 0.106.

Before 0.106 the exit stack lived in `AsyncExitStackMiddleware` around the
router; from 0.118 it wraps `await response(...)` inside the route
(`fastapi/routing.py`, `request_response`).  Either way Starlette's
response awaits its background tasks before returning, so they run inside
the stack and see the value.
"""

from contextvars import ContextVar

from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from ctxlab.probe import UNSET, note, probe
from ctxlab.scenario import ClientRequest, by_version, scenario

tenant: ContextVar = ContextVar("tenant")


async def tenant_scope():
    token = tenant.set("acme")
    try:
        yield
    finally:
        tenant.reset(token)


async def report_tenant():
    probe("background", tenant)


@scenario(
    "yield-teardown-vs-background",
    summary="A background task sees a yield dependency's value reset on FastAPI 0.106 to 0.117",
    tags=["fastapi", "dependency", "responses", "lost"],
    expect={
        "endpoint": {"tenant": "acme"},
        "background": {"tenant": by_version("fastapi", {"<0.106": "acme", ">=0.106,<0.118": UNSET, ">=0.118": "acme"})},
    },
    naive={"background": {"tenant": "acme"}},
    why="The dependency resets the var in its teardown. FastAPI 0.106 to 0.117 run "
    "that teardown when the endpoint returns, before the response is sent, so the "
    "background task (which runs after sending) sees the var already reset. Older "
    "and newer versions tear down after the response, background tasks included. "
    "The same code passes or fails with the FastAPI version.",
    fix="Hand the background task the value as an argument "
    "(background_tasks.add_task(job, tenant.get())) and let the job set its own "
    "ContextVars; see yield-teardown-vs-background-argument.",
)
def yield_teardown_vs_background():
    app = FastAPI()

    @app.get("/", dependencies=[Depends(tenant_scope)])
    async def endpoint(background_tasks: BackgroundTasks):
        probe("endpoint", tenant)
        background_tasks.add_task(report_tenant)
        return {}

    return app


async def report_for(value):
    token = tenant.set(value)
    try:
        probe("background", tenant)
    finally:
        tenant.reset(token)


@scenario(
    "yield-teardown-vs-background-argument",
    summary="The fix: the background task gets the value as an argument, on every FastAPI",
    tags=["fastapi", "dependency", "responses", "fix"],
    expect={"background": {"tenant": "acme"}},
    why="The value is read while the dependency still holds it, when the task is "
    "added, and the job sets it for its own duration: the teardown's timing no "
    "longer matters.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def yield_teardown_vs_background_argument():
    app = FastAPI()

    @app.get("/", dependencies=[Depends(tenant_scope)])
    async def endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(report_for, tenant.get())
        return {}

    return app


class Refused(Exception):
    pass


@scenario(
    "yield-teardown-before-handler",
    summary="An exception handler sees a yield dependency's value already reset",
    tags=["fastapi", "dependency", "errors", "lost"],
    requests=[ClientRequest(status=418)],
    expect={"endpoint": {"tenant": "acme"}, "handler": {"tenant": UNSET}},
    naive={"handler": {"tenant": "acme"}},
    why="Since FastAPI 0.74 the dependencies' exit stack sits inside the layer that "
    "calls exception handlers: the exception leaves the endpoint, unwinds through "
    "the dependency's teardown (which resets the var), and only then reaches the "
    "handler. An error report written there has lost the tenant.",
    fix="Keep what error handling needs on request.state (see "
    "yield-teardown-before-handler-request-state), or catch the exception in the "
    "dependency around its yield, where the var is still set.",
)
def yield_teardown_before_handler():
    app = FastAPI()

    @app.get("/", dependencies=[Depends(tenant_scope)])
    async def endpoint():
        probe("endpoint", tenant)
        raise Refused()

    @app.exception_handler(Refused)
    async def on_refused(request, exc):
        probe("handler", tenant)
        return JSONResponse({"error": "refused"}, status_code=418)

    return app


async def tenant_scope_and_state(request: Request):
    request.state.tenant = "acme"  # survives the teardown
    token = tenant.set("acme")
    try:
        yield
    finally:
        tenant.reset(token)


@scenario(
    "yield-teardown-before-handler-request-state",
    summary="The fix: the handler reads the tenant from request.state",
    tags=["fastapi", "dependency", "errors", "fix"],
    requests=[ClientRequest(status=418)],
    expect={"handler": {"tenant": UNSET, "request.state.tenant": "acme"}},
    why="request.state lives on the request scope, which the handler receives; no teardown resets it.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def yield_teardown_before_handler_request_state():
    app = FastAPI()

    @app.get("/", dependencies=[Depends(tenant_scope_and_state)])
    async def endpoint():
        raise Refused()

    @app.exception_handler(Refused)
    async def on_refused(request, exc):
        probe("handler", tenant)
        note("handler", "request.state.tenant", getattr(request.state, "tenant", UNSET))
        return JSONResponse({"error": "refused"}, status_code=418)

    return app
