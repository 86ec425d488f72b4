"""ctxlab.target: the user's app loaded and served as a server would."""

import asyncio
import contextlib
import contextvars
import sys

import pytest
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
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
            "length": request.headers.get("content-length"),
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
    assert [s["length"] for s in seen] == ["5", None]  # as a client sends them: only with a body


@pytest.mark.parametrize("server", ["asgi", "uvicorn"])
def test_after_the_body_receive_waits_for_the_response_to_complete(server):
    """What a server's receive gives once the body is read: nothing until
    the response is complete, then a disconnect.  The app's own record
    says so, in process as on uvicorn."""
    record = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        record.append((await receive())["type"])
        waiting = asyncio.ensure_future(receive())
        await asyncio.sleep(0.05)
        record.append(waiting.done())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        record.append((await waiting)["type"])

    (reply,) = asyncio.run(target.send_all(app, [Request()], server=server))
    assert reply.status == 200 and record == ["http.request", False, "http.disconnect"]


def test_a_request_the_server_never_answers_is_a_failed_request():
    """On uvicorn, an app that outlasts the client's timeout: the request
    failed (the client's own error), it did not crash ctxlab."""
    import httpx

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(30)

    async def send_one():
        async with target.serving(app, server="uvicorn", lifespan=False, timeout=0.5) as client:
            return await client.send(Request())

    reply = asyncio.run(send_one())
    assert reply.status is None and isinstance(reply.error, httpx.TimeoutException)


def test_an_error_after_the_response_is_reported_as_such():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        raise ValueError("teardown")

    (reply,) = asyncio.run(target.send_all(app, [Request()]))
    assert reply.status == 204 and isinstance(reply.error, ValueError)


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()])
def test_an_app_raising_systemexit_is_a_failed_request_as_on_a_server(raised):
    # uvicorn catches BaseException around the app and answers 500; ctxlab
    # must not exit with the app's code.
    async def app(scope, receive, send):
        raise raised

    (reply,) = asyncio.run(target.send_all(app, [Request()]))
    assert reply.error is raised and reply.status is None


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
    # An `.app` that cannot be called is no app being wrapped (a settings object).
    assert target.unwrap(Wrapper("settings")) == ([], None)


def test_wrappers_that_wrap_each_other_end_the_search():
    """`a.app = b; b.app = a`: no app inside, and the search ends."""

    class Wrapper:
        async def __call__(self, scope, receive, send):
            pass

    first, second = Wrapper(), Wrapper()
    first.app, second.app = second, first
    wrappers, found = target.unwrap(first)
    assert found is None and wrappers[:2] == [first, second]


def test_a_background_task_still_running_after_the_grace_is_cancelled():
    """The response went out; the app's background task outlives the grace:
    an error after the response, and the task is cancelled, by its own record."""
    record = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            record.append("cancelled")
            raise

    async def send_one():
        async with target.serving(app, server="asgi", lifespan=False, timeout=0.2) as client:
            return await client.send(Request())

    reply = asyncio.run(send_one())
    assert (reply.status, reply.body) == (200, b"done")
    assert isinstance(reply.error, TimeoutError) and record == ["cancelled"]


def test_an_instantiated_layer_is_named_as_its_code_is_written():
    """A layer built by hand (a wrapper, a Mount's middleware): a function
    given to BaseHTTPMiddleware is named as `@app.middleware("http")` is,
    a subclass by its class."""
    app, _ = recording_app()

    async def stamp(request, call_next):
        return await call_next(request)

    class Audit(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            return await call_next(request)

    assert target.describe_object(BaseHTTPMiddleware(app, dispatch=stamp)) == target.Layer("stamp", "http_decorator")
    assert target.describe_object(Audit(app)) == target.Layer("Audit", "base_http")
    assert target.describe_object(Audit(app, dispatch=stamp)) == target.Layer("stamp", "http_decorator")


@pytest.fixture
def broken(tmp_path):
    """The path of a module `broken` the test writes; forgotten after it, so
    that each case imports its own."""
    yield tmp_path / "broken.py"
    sys.modules.pop("broken", None)


BROKEN_PROPERTY = "class Settings:\n    @property\n    def app(self):\n        raise RuntimeError('no config')\n"


@pytest.mark.parametrize(
    "source, spec, message",
    [
        ("import sys\nsys.exit('bye')\n", "broken:app", "importing 'broken' called sys.exit('bye')"),
        ("raise KeyboardInterrupt\n", "broken:app", "importing 'broken' raised KeyboardInterrupt"),
        ("raise RuntimeError('no config')\n", "broken:app", "importing 'broken' failed: RuntimeError: no config"),
        ("app = 3\n", "broken:app", "broken:app is a int, not an ASGI application"),
        ("apps = 3\n", "broken:app", "module 'broken' has no attribute 'app'; did you mean 'apps'?"),
        ("import types\nh = types.SimpleNamespace(apps=1)\n", "broken:h.app",
         "broken:h has no attribute 'app'; did you mean 'apps'?"),
        ("import types\nh = types.SimpleNamespace(inner=types.SimpleNamespace())\n", "broken:h.inner.app",
         "broken:h.inner has no attribute 'app'"),
        (BROKEN_PROPERTY + "settings = Settings()\n", "broken:settings.app",
         "reading broken:settings.app failed: RuntimeError: no config"),
        (BROKEN_PROPERTY + "settings = Settings()\n", "broken:settings.app.inner",
         "reading broken:settings.app failed: RuntimeError: no config"),
    ],
)  # fmt: skip
def test_loading_errors_are_one_line(tmp_path, broken, source, spec, message):
    broken.write_text(source)
    with pytest.raises(TargetError) as raised:
        target.load(spec, app_dir=tmp_path)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "body, message",
    [
        ("import sys\n    sys.exit(4)", "the factory broken:make called sys.exit(4)"),
        ("raise KeyboardInterrupt", "the factory broken:make raised KeyboardInterrupt"),
        ("raise RuntimeError('no config')", "calling the factory broken:make failed: RuntimeError: no config"),
    ],
)
def test_a_factory_that_fails_is_one_line(tmp_path, broken, body, message):
    broken.write_text(f"def make():\n    {body}\n")
    with pytest.raises(TargetError) as raised:
        target.load("broken:make", factory=True, app_dir=tmp_path)
    assert str(raised.value) == message


def test_an_attribute_path_is_followed_as_uvicorn_follows_it(tmp_path):
    """`MODULE:holder.app`: uvicorn's importer takes each name in turn."""
    (tmp_path / "nested.py").write_text(
        "import types\n"
        "seen = []\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'http':\n"
        "        seen.append(scope['path'])\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "        await send({'type': 'http.response.body', 'body': b''})\n"
        "api = types.SimpleNamespace(v1=types.SimpleNamespace(app=app))\n"
    )
    loaded = target.load("nested:api.v1.app", app_dir=tmp_path)
    assert loaded.asgi is loaded.module.app
    (reply,) = asyncio.run(target.send_all(loaded.asgi, [Request(path="/here")]))
    assert reply.status == 200 and loaded.module.seen == ["/here"]
