"""`ctxlab trace` and `pytest --ctxlab` budgets, as ratios against
baselines measured in the same run (interleaved runs, each side's least
time: neighbours on a shared machine only add time; see bench.py).

    python benchmarks/bench_trace.py [--runs N]

- 1,000 requests, one after another, to a FastAPI app with three
  middleware and two dependencies, in process: traced (recording and
  analysis) vs the same requests untraced.  Budget 1.5x on Python 3.12+
  (sys.monitoring), 3x on 3.10/3.11 (ContextVar methods replaced).
- A suite of 200 tests, each sending a request through Starlette's
  TestClient: `pytest --ctxlab` vs plain pytest.  Budget 1.5x on 3.12+.

Exit status 1 when a budget is exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from fastapi import Depends, FastAPI

NEW_RECORDER = sys.version_info >= (3, 12)
REQUESTS = 1000
TESTS = 200


def fastapi_app():
    """Three middleware (pure ASGI, BaseHTTPMiddleware, `@app.middleware`)
    and two dependencies (`async def`, `def`), each using ContextVars."""
    from contextvars import ContextVar

    from starlette.middleware.base import BaseHTTPMiddleware

    request_id: ContextVar[str] = ContextVar("request_id")
    user: ContextVar[str] = ContextVar("user", default="anonymous")

    class RequestId:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            token = request_id.set("r")
            try:
                await self.app(scope, receive, send)
            finally:
                request_id.reset(token)

    class Timing(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            response = await call_next(request)
            response.headers["x-request-id"] = request_id.get()
            return response

    async def current_user() -> str:
        user.set("alice")
        return "alice"

    def settings() -> str:
        return request_id.get("none")

    app = FastAPI()

    @app.middleware("http")
    async def audit(request, call_next):
        response = await call_next(request)
        user.get()
        return response

    app.add_middleware(Timing)
    app.add_middleware(RequestId)

    @app.get("/")
    async def endpoint(name: str = Depends(current_user), config: str = Depends(settings)):
        return {"user": user.get(), "request": request_id.get(), "config": config}

    return app


def untraced(app, requests) -> float:
    from ctxlab import target

    started = time.perf_counter()
    replies = asyncio.run(target.send_all(app, requests))
    elapsed = time.perf_counter() - started
    assert all(reply.status == 200 for reply in replies)
    return elapsed


def traced(app, requests) -> float:
    from ctxlab.trace import trace_app

    started = time.perf_counter()
    result = trace_app(app, requests)
    elapsed = time.perf_counter() - started
    assert all(r.status == 200 for r in result.requests) and result.summary["lost"] == 1, result.summary
    return elapsed


SUITE = """
from contextvars import ContextVar

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

request_id = ContextVar("request_id")


class RequestId:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        token = request_id.set("r")
        try:
            await self.app(scope, receive, send)
        finally:
            request_id.reset(token)


async def endpoint(request):
    return JSONResponse({"id": request_id.get()})


app = Starlette(routes=[Route("/", endpoint)])
app.add_middleware(RequestId)
client = TestClient(app)


@pytest.mark.parametrize("n", range(COUNT))
def test_request(n):
    assert client.get("/").json() == {"id": "r"}
"""


def pytest_run(directory: Path, *options: str) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, str(directory)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the benchmark suite failed:\n{done.stdout[-2000:]}")
    return elapsed


def interleaved(runs: int, ours, theirs) -> tuple[float, float]:
    ours(), theirs()  # warm up: imports, bytecode, file cache
    a, b = [], []
    for _ in range(runs):
        a.append(ours())
        b.append(theirs())
    return min(a), min(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per figure")
    runs = parser.parse_args().runs
    from ctxlab import target

    app = fastapi_app()
    requests = [target.Request(path="/")] * REQUESTS
    rows = []
    budget = 1.5 if NEW_RECORDER else 3.0
    rows.append((f"{REQUESTS} requests, FastAPI, 3 middleware + 2 dependencies: traced vs not",
                 *interleaved(runs, lambda: traced(app, requests), lambda: untraced(app, requests)), budget))  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        suite = Path(directory)
        (suite / "test_suite.py").write_text(textwrap.dedent(SUITE).replace("COUNT", str(TESTS)))
        figures = interleaved(max(3, runs // 2), lambda: pytest_run(suite, "--ctxlab"), lambda: pytest_run(suite))
        rows.append((f"{TESTS}-test suite: pytest --ctxlab vs pytest", *figures, 1.5 if NEW_RECORDER else None))

    width = max(len(row[0]) for row in rows)
    print(f"{'figure':<{width}}  {'traced':>8}  {'baseline':>8}  {'ratio':>6}  budget")
    failed = 0
    for figure, ours, theirs, limit in rows:
        value = ours / theirs
        verdict = "-" if limit is None else "ok" if value <= limit else "OVER"
        failed += verdict == "OVER"
        shown = f"<= {limit}x {verdict}" if limit else "(no budget before 3.12)"
        print(f"{figure:<{width}}  {ours:>7.3f}s  {theirs:>7.3f}s  {value:>5.2f}x  {shown}")
    recorder = "sys.monitoring" if NEW_RECORDER else "ContextVar methods replaced"
    print(f"python {sys.version.split()[0]} ({recorder}), {os.cpu_count()} cores, {runs} interleaved runs, least times")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
