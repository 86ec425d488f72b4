"""How requests reach a scenario app: in-process, or (later) a real server.

Every request carries its number in a header; the outermost layer turns it
into the recorder's request attribution, so the app itself is untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx

from ctxlab.probe import end_request, start_request

REQUEST_HEADER = "x-ctxlab-request"


def attribute_requests(app, spec_version: str | None = None, state: dict | None = None):
    """Wrap `app` so probes know which request they belong to.

    `state` is the lifespan state, copied into each request as servers do.
    """
    header = REQUEST_HEADER.encode()

    async def outermost(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        number = int(dict(scope["headers"]).get(header, b"0"))
        if spec_version is not None:
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": spec_version}}
        if state is not None:
            scope = {**scope, "state": dict(state)}
        token = start_request(number)
        try:
            await app(scope, receive, send)
        finally:
            end_request(number, token)

    return outermost


@asynccontextmanager
async def asgi_client(app) -> AsyncIterator[httpx.AsyncClient]:
    """httpx.ASGITransport: the app runs inline in whichever task sends."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


class UnexpectedResponse(Exception):
    pass


class LifespanFailed(Exception):
    pass


@asynccontextmanager
async def lifespan(app) -> AsyncIterator[dict[str, Any]]:
    """Run the app's lifespan around the requests, in a task of its own with
    a fresh context, as uvicorn does; yield the lifespan state."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    loop = asyncio.get_running_loop()
    main = contextvars.Context().run(loop.create_task, app(scope, inbox.get, outbox.put))

    async def step(message: str) -> None:
        await inbox.put({"type": f"lifespan.{message}"})
        answer = loop.create_task(outbox.get())
        await asyncio.wait({main, answer}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            main.result()  # raises what the app raised
            raise LifespanFailed(f"the app returned during lifespan {message}")
        if answer.result()["type"] != f"lifespan.{message}.complete":
            raise LifespanFailed(f"lifespan {message} failed: {answer.result().get('message', '')}")

    await step("startup")
    try:
        yield state
    finally:
        await step("shutdown")
        await main


async def send(client: httpx.AsyncClient, request, number: int) -> httpx.Response | None:
    headers = {**request.headers, REQUEST_HEADER: str(number)}
    try:
        response = await client.request(request.method, request.path, headers=headers, content=request.body)
    except Exception:
        if request.status == 500:
            # In process, an app that answered 500 and re-raised (as
            # Starlette's ServerErrorMiddleware does) reaches us as the
            # exception; a server would log it.  Expected here.
            return None
        raise
    if response.status_code != request.status:
        raise UnexpectedResponse(
            f"request {number} ({request.method} {request.path}) answered {response.status_code},"
            f" expected {request.status}: {response.text[:200]}"
        )
    return response
