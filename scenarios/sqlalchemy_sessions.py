"""SQLAlchemy's `async_scoped_session` keyed on the current task.

SQLAlchemy's asyncio docs show `async_scoped_session(factory,
scopefunc=current_task)`: one session per task.  A request is not one task
as soon as a BaseHTTPMiddleware is in the stack: `call_next` runs the
endpoint in a child task, so the middleware and the endpoint get two
different sessions.  The endpoint's writes sit in a session nobody commits,
and a `remove()` in the middleware only drops the middleware's own entry:
the registry keeps the endpoint task's session (and the task) forever.

Sources: SQLAlchemy's asyncio docs, "Using asyncio scoped session" (the
warning that `remove()` must be called in the outermost awaitable, or the
task and its session stay in memory); users meeting it behind middleware:
goofy-z/fastapi-web-template#1, Skyvern-AI/skyvern#6312 ("Fix DB session
reuse across asyncio tasks"); the ContextVar-scoped fix as adopted in
safe-global/safe-decoder-service#79.

Notes from checking it: the endpoint only `add()`s its order, so nothing
reaches the database unless its own session is flushed; had it executed SQL,
the StaticPool used here (one in-memory database, one shared connection)
would make the uncommitted row visible to the middleware's session, which
a real pool would not.  SQLAlchemy 2.1 no longer installs greenlet by
default: asyncio needs `sqlalchemy[asyncio]`.
"""

import itertools
from asyncio import current_task
from contextlib import asynccontextmanager
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note
from ctxlab.scenario import ClientRequest, per_request, scenario


def orders_app(scopefunc, start_scope=lambda: None):
    """A BaseHTTPMiddleware that commits the request's session after
    `call_next`, and an endpoint that adds an order through it."""
    # Imported here, so that the catalog loads (and these scenarios are
    # skipped) where SQLAlchemy is not installed.
    from sqlalchemy import Column, Integer, String, func, select
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine
    from sqlalchemy.orm import declarative_base
    from sqlalchemy.pool import StaticPool

    Base = declarative_base()

    class Order(Base):
        __tablename__ = "orders"
        id = Column(Integer, primary_key=True)
        item = Column(String)

    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)  # one in-memory database
    Session = async_scoped_session(async_sessionmaker(engine, expire_on_commit=False), scopefunc=scopefunc)

    @asynccontextmanager
    async def lifespan(app):
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    class CommitMiddleware(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            start_scope()
            session = Session()
            response = await call_next(request)
            await Session.commit()
            note("middleware.after", "endpoint used my session", request.state.session is session)
            note("middleware.after", "orders committed", await Session.scalar(select(func.count(Order.id))))
            await Session.remove()
            note("middleware.after", "sessions kept", len(Session.registry.registry))
            return response

    async def endpoint(request):
        request.state.session = Session()
        Session.add(Order(item="book"))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)
    app.add_middleware(CommitMiddleware)
    return app


TWO_REQUESTS = [ClientRequest(), ClientRequest()]


@scenario(
    "scoped-session-current-task",
    summary="async_scoped_session(scopefunc=current_task): middleware and endpoint get different sessions; the registry grows",
    tags=["sqlalchemy", "middleware", "tasks", "lost", "leak"],
    requests=TWO_REQUESTS,
    lifespan=True,
    requires={"sqlalchemy": ">=2", "aiosqlite": ">=0.17", "greenlet": ">=1"},
    expect={
        "middleware.after": {
            "endpoint used my session": False,
            "orders committed": 0,
            "sessions kept": per_request(1, 2),
        }
    },
    naive={
        "middleware.after": {
            "endpoint used my session": True,
            "orders committed": per_request(1, 2),
            "sessions kept": 0,
        }
    },
    why="current_task() is the scope key. BaseHTTPMiddleware runs the endpoint in a "
    "child task (call_next), so the endpoint's Session() is a second session: its "
    "order is never committed (the middleware commits its own, empty one), and "
    "Session.remove() in the middleware removes only the middleware task's entry. "
    "The endpoint task's session, and the finished task itself as the key, stay in "
    "the registry: one more per request, for good.",
    fix="Scope the session to the request, not the task: a ContextVar set before "
    "call_next, which child tasks inherit (see scoped-session-request-scope), or a "
    "session created per request by a dependency that yields it.",
)
def scoped_session_current_task():
    return orders_app(scopefunc=current_task)


def request_scoped_app():
    request_key: ContextVar = ContextVar("request_key")
    keys = itertools.count(1)
    return orders_app(scopefunc=request_key.get, start_scope=lambda: request_key.set(next(keys)))


@scenario(
    "scoped-session-request-scope",
    summary="The fix: scopefunc reads a per-request key from a ContextVar set before call_next",
    tags=["sqlalchemy", "middleware", "fix"],
    requests=TWO_REQUESTS,
    lifespan=True,
    requires={"sqlalchemy": ">=2", "aiosqlite": ">=0.17", "greenlet": ">=1"},
    expect={
        "middleware.after": {
            "endpoint used my session": True,
            "orders committed": per_request(1, 2),
            "sessions kept": 0,
        }
    },
    why="The middleware sets the request's key before call_next, so the child task "
    "that runs the endpoint inherits it and Session() finds the same session. One "
    "commit writes the endpoint's order; one remove() empties the registry.",
    fix="Nothing to fix: this is the pattern to copy (or pass the session explicitly "
    "with a FastAPI dependency that yields it).",
)
def scoped_session_request_scope():
    return request_scoped_app()
