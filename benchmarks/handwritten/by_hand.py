"""What a user would write instead of ctxlab, for seven of its scenarios:
the apps, one request each through httpx's ASGITransport, and what each
place saw.  Run as a script it prints them; test_by_hand.py asserts them.

    python benchmarks/handwritten/by_hand.py
    python -m pytest -q benchmarks/handwritten/test_by_hand.py

The facts are those of bad-then-shiny, shiny-then-bad, bad-only,
shiny-only, dependency-audit, sync-dependency and executor-no-copy.
"""

import asyncio
from contextvars import ContextVar

import httpx
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

UNSET = "<unset>"
seen: dict = {}


def see(place, var):
    try:
        seen[place] = var.get()
    except LookupError:
        seen[place] = UNSET


def observe(app, path="/"):
    """Send one request; what each place saw."""

    async def request():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await client.get(path)).status_code == 200

    seen.clear()
    asyncio.run(request())
    return dict(seen)


# -- the middleware order: bad-then-shiny, shiny-then-bad, bad-only, shiny-only
context = ContextVar("context", default=None)


class Bad(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        see("bad.after", context)
        return response


class Shiny:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            see("shiny.after", context)


async def homepage(request):
    context.set({"random_int": 42})
    see("endpoint", context)
    return JSONResponse({})


def middleware_app(*middleware):
    app = Starlette(routes=[Route("/", homepage)])
    for cls in middleware:
        app.add_middleware(cls)
    return app


# -- dependency-audit
request_id = ContextVar("request_id")
user = ContextVar("user")


class RequestID(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        request_id.set("req-0001")
        return await call_next(request)


class Audit(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        see("audit.request_id", request_id)
        see("audit.user", user)
        return response


async def current_user():
    user.set("alice")


def audit_app():
    app = FastAPI()

    @app.get("/users/{user_id}", dependencies=[Depends(current_user)])
    async def update_user(user_id: int):
        see("endpoint.user", user)
        return {}

    app.add_middleware(Audit)
    app.add_middleware(RequestID)
    return app


# -- sync-dependency
tenant = ContextVar("tenant", default=None)


def sync_tenant():
    tenant.set("acme")
    see("dependency", tenant)


def tenant_app():
    app = FastAPI()

    @app.get("/", dependencies=[Depends(sync_tenant)])
    async def endpoint():
        see("endpoint", tenant)
        return {}

    return app


# -- executor-no-copy
trace_id = ContextVar("trace_id", default=None)


async def offloading(request):
    trace_id.set("req-abc-123")
    await asyncio.get_running_loop().run_in_executor(None, see, "job", trace_id)
    return PlainTextResponse("ok")


def executor_app():
    return Starlette(routes=[Route("/", offloading)])


CASES = {
    "bad-then-shiny": lambda: observe(middleware_app(Bad, Shiny)),
    "shiny-then-bad": lambda: observe(middleware_app(Shiny, Bad)),
    "bad-only": lambda: observe(middleware_app(Bad)),
    "shiny-only": lambda: observe(middleware_app(Shiny)),
    "dependency-audit": lambda: observe(audit_app(), "/users/123"),
    "sync-dependency": lambda: observe(tenant_app()),
    "executor-no-copy": lambda: observe(executor_app()),
}

if __name__ == "__main__":
    for name, case in CASES.items():
        print(name)
        for place, value in case().items():
            print(f"  {place}: {value}")
