"""How requests reach a scenario app: in-process, or (later) a real server.

Every request carries its number in a header; the outermost layer turns it
into the recorder's request attribution, so the app itself is untouched.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx

from ctxlab.probe import end_request, start_request

REQUEST_HEADER = "x-ctxlab-request"


def attribute_requests(app, spec_version: str | None = None):
    """Wrap `app` so probes know which request they belong to."""
    header = REQUEST_HEADER.encode()

    async def outermost(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        number = int(dict(scope["headers"]).get(header, b"0"))
        if spec_version is not None:
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": spec_version}}
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


async def send(client: httpx.AsyncClient, request, number: int) -> httpx.Response:
    headers = {**request.headers, REQUEST_HEADER: str(number)}
    response = await client.request(request.method, request.path, headers=headers, content=request.body)
    if response.status_code != request.status:
        raise UnexpectedResponse(
            f"request {number} ({request.method} {request.path}) answered {response.status_code},"
            f" expected {request.status}: {response.text[:200]}"
        )
    return response
