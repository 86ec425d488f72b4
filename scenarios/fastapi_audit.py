"""The audit log that cannot see the user: a FastAPI dependency sets a var.

A request-ID middleware and an audit middleware are both BaseHTTPMiddleware.
The ID is set in middleware, the user in an `async def` dependency.  The
audit reads both after `call_next`: the ID is there, the user is not.  The
dependency ran in the task that the audit's `call_next` started; the audit's
code after `call_next` runs back in the audit's own task.
"""

from contextvars import ContextVar

from fastapi import Depends, FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

from ctxlab.probe import UNSET, note, probe
from ctxlab.scenario import ClientRequest, scenario

request_id: ContextVar = ContextVar("request_id")
user: ContextVar = ContextVar("user")
ALICE = {"id": 123, "name": "alice"}


class RequestIDMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        request_id.set("req-0001")
        return await call_next(request)


class UserMiddleware(BaseHTTPMiddleware):
    """Authenticates in middleware, before call_next: the value flows down."""

    async def dispatch(self, request, call_next):
        user.set(ALICE)
        return await call_next(request)


class AuditMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        probe("audit.after", request_id, user)
        return response


class StateAuditMiddleware(BaseHTTPMiddleware):
    """The request.state fix: the scope travels with the request, not the task."""

    async def dispatch(self, request, call_next):
        response = await call_next(request)
        note("audit.after", "request.state.user", getattr(request.state, "user", UNSET))
        return response


class PureAuditMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            probe("audit.after", request_id, user)


async def current_user(request: Request):
    user.set(ALICE)
    request.state.user = ALICE
    return ALICE


def audited_app(*middleware, dependencies=(Depends(current_user),)):
    app = FastAPI()

    @app.get("/users/{user_id}", dependencies=list(dependencies))
    async def update_user(user_id: int):
        probe("endpoint", request_id, user)
        return {"updated": user_id}

    for cls in middleware:  # innermost first: add_middleware wraps what is there
        app.add_middleware(cls)
    return app


ONE_REQUEST = [ClientRequest(path="/users/123")]
SEEN_BY_ENDPOINT = {"request_id": "req-0001", "user": ALICE}
WHY = (
    "Each BaseHTTPMiddleware runs the rest of the app in a child task. RequestID's "
    "set happens before its call_next, so every task created below inherits it. "
    "The dependency's set happens in the innermost child task (started by the "
    "audit's call_next); when call_next returns, the audit is back in its own "
    "task, whose context was copied before the user existed."
)
FIX = (
    "Put per-request data the outer layers need on request.state (it lives in the "
    "ASGI scope, shared by every layer), or set it in middleware before call_next, "
    "or make the audit pure ASGI middleware."
)


@scenario(
    "dependency-audit",
    summary="An async dependency sets the user; a BaseHTTPMiddleware audit cannot read it",
    tags=["fastapi", "dependency", "middleware", "lost"],
    expect={"endpoint": SEEN_BY_ENDPOINT, "audit.after": {"request_id": "req-0001", "user": UNSET}},
    naive={"audit.after": {"user": ALICE}},
    why=WHY,
    fix=FIX,
    requests=ONE_REQUEST,
)
def dependency_audit():
    return audited_app(AuditMiddleware, RequestIDMiddleware)


@scenario(
    "dependency-audit-request-state",
    summary="The fix: the dependency puts the user on request.state, the audit reads it there",
    tags=["fastapi", "dependency", "middleware", "fix"],
    expect={"endpoint": SEEN_BY_ENDPOINT, "audit.after": {"request.state.user": ALICE}},
    why="request.state is backed by scope['state'], one dict shared by every layer "
    "that sees the request, whichever task it runs in.",
    fix=FIX,
    requests=ONE_REQUEST,
)
def dependency_audit_request_state():
    return audited_app(StateAuditMiddleware, RequestIDMiddleware)


@scenario(
    "dependency-audit-pure-asgi",
    summary="The fix: the audit as pure ASGI middleware shares the endpoint's task",
    tags=["fastapi", "dependency", "middleware", "fix"],
    expect={"endpoint": SEEN_BY_ENDPOINT, "audit.after": SEEN_BY_ENDPOINT},
    why="The audit now awaits the inner app directly. It sits inside RequestID's "
    "child task, the same task the dependency and endpoint run in, so it sees the "
    "dependency's set.",
    fix=FIX,
    requests=ONE_REQUEST,
)
def dependency_audit_pure_asgi():
    return audited_app(PureAuditMiddleware, RequestIDMiddleware)


@scenario(
    "dependency-audit-user-middleware",
    summary="The fix: the user is set in middleware before call_next, so it flows down",
    tags=["fastapi", "dependency", "middleware", "fix"],
    expect={"endpoint": SEEN_BY_ENDPOINT, "audit.after": SEEN_BY_ENDPOINT},
    why="Values set before call_next are copied into every task started below, "
    "including the audit's: setting the user above the audit makes it visible there.",
    fix=FIX,
    requests=ONE_REQUEST,
)
def dependency_audit_user_middleware():
    return audited_app(AuditMiddleware, UserMiddleware, RequestIDMiddleware, dependencies=())
