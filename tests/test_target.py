"""ctxlab.target: the user's app loaded and served as a server would."""

import asyncio
import contextlib
import contextvars

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ctxlab import target
from ctxlab.target import Request, TargetError


def test_the_public_names_are_the_documented_ones():
    public = {
        name
        for name, value in vars(target).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == target.__name__
    }
    assert set(target.__all__) == public


def recording_app():
    """An app that records, per request, what a server would have given it."""
    seen = []
    var = contextvars.ContextVar("var", default=None)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"counter": {"n": 0}, "name": "state"}

    async def endpoint(request):
        seen.append({
            "app_is_self": request.app is app,
            "left_over": var.get(),
            "state": request.state.name,
            "host": request.headers["host"],
            "body": (await request.body()).decode(),
            "method": request.method,
        })  # fmt: skip
        var.set("set by an earlier request")
        request.state.counter["n"] += 1
        request.state.name = "changed"  # a shallow copy: the next request still sees "state"
        return JSONResponse({"n": request.state.counter["n"]})

    app = Starlette(routes=[Route("/r", endpoint, methods=["GET", "POST"])], lifespan=lifespan)
    return app, seen


@pytest.mark.parametrize("server", ["asgi", "uvicorn"])
def test_requests_go_through_the_apps_call_each_in_a_fresh_context_with_lifespan_state(server):
    app, seen = recording_app()
    requests = [Request("POST", "/r", (("x-a", "1"),), "example.com", b"hello"), Request(path="/r")]
    replies = asyncio.run(target.send_all(app, requests, server=server, lifespan=True))
    assert [reply.status for reply in replies] == [200, 200] and replies[1].body == b'{"n":2}'
    assert [s["app_is_self"] for s in seen] == [True, True]
    assert [s["left_over"] for s in seen] == [None, None]
    assert [s["state"] for s in seen] == ["state", "state"]
    assert seen[0]["host"] == "example.com" and seen[0]["body"] == "hello" and seen[0]["method"] == "POST"


def test_an_error_after_the_response_is_reported_as_such():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        raise ValueError("teardown")

    (reply,) = asyncio.run(target.send_all(app, [Request()]))
    assert reply.status == 204 and isinstance(reply.error, ValueError) and reply.after_response


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()])
def test_an_app_raising_systemexit_is_a_failed_request_as_on_a_server(raised):
    # uvicorn catches BaseException around the app and answers 500; ctxlab
    # must not exit with the app's code.
    async def app(scope, receive, send):
        raise raised

    (reply,) = asyncio.run(target.send_all(app, [Request()]))
    assert reply.error is raised and not reply.after_response


def test_wrappers_are_unwrapped_outermost_first():
    app, _ = recording_app()

    class Wrapper:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            await self.app(scope, receive, send)

    outer = Wrapper(Wrapper(app))
    wrappers, found = target.unwrap(outer)
    assert found is app and wrappers == [outer, outer.app]


@pytest.mark.parametrize(
    "source, message",
    [
        ("import sys\nsys.exit('bye')\n", "importing 'broken' called sys.exit('bye')"),
        ("raise KeyboardInterrupt\n", "importing 'broken' raised KeyboardInterrupt"),
        ("raise RuntimeError('no config')\n", "importing 'broken' failed: RuntimeError: no config"),
        ("app = 3\n", "broken:app is a int, not an ASGI application"),
    ],
)
def test_loading_errors_are_one_line(tmp_path, source, message):
    (tmp_path / "broken.py").write_text(source)
    with pytest.raises(TargetError) as raised:
        target.load("broken:app", app_dir=tmp_path)
    assert str(raised.value) == message
