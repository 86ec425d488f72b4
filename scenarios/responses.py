"""After the endpoint returns: streaming bodies and background tasks.

Both run after the endpoint, and where they run decides what they see and
whether their own sets reach the middleware around them.
"""

from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import Varies, scenario

stage: ContextVar = ContextVar("stage", default=None)


class ReadAfterMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            probe("middleware.after", stage)


def wrapped(endpoint):
    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(ReadAfterMiddleware)
    return app


async def body():
    probe("body.start", stage)
    stage.set("set while streaming")
    yield b"chunk"


async def streaming_endpoint(request):
    stage.set("set in endpoint")
    return StreamingResponse(body())


def advertises_spec_2_4(env):
    """Does the server tell the app it speaks ASGI spec 2.4?

    uvicorn's HTTP protocols advertise 2.3, except 0.28.0 to 0.32.0: 0.28.0
    raised 2.4 when `send()` learned to raise on a disconnected client
    (encode/uvicorn#2220), and 0.32.1 dropped back to 2.3 (encode/uvicorn#2513).
    """
    if env.server == "uvicorn" and env.spec_version is None:
        return env.has("uvicorn", ">=0.28.0,<0.32.1")
    return env.spec_at_least("2.4")


def streams_in_request_task(env):
    # Starlette 0.42 added a path for ASGI spec_version >= 2.4 servers that
    # streams in the request's own task instead of a task group child.
    return env.has("starlette", ">=0.42") and advertises_spec_2_4(env)


@scenario(
    "streaming-body",
    summary="A streaming body sees the endpoint's value; its own set comes back only with spec 2.4",
    tags=["starlette", "responses", "spec-version"],
    expect={
        "body.start": {"stage": "set in endpoint"},
        "middleware.after": {
            "stage": Varies(
                'starlette>=0.42 with spec_version>=2.4 (--spec-version 2.4, uvicorn 0.28.0 to 0.32.0): '
                '"set while streaming"; else "set in endpoint"',
                lambda env: "set while streaming" if streams_in_request_task(env) else "set in endpoint",
            )
        },
    },
    why="StreamingResponse iterates the body after the endpoint returned. Below ASGI "
    "spec_version 2.4 (and always before Starlette 0.42) it does so in a task group "
    "child, which inherits the endpoint's value but whose sets stay in the child. "
    "With spec_version >= 2.4 it streams in the request's task, so the set does "
    "reach the middleware. uvicorn advertises 2.4 only in 0.28.0 to 0.32.0, so there "
    "the set comes back on a real server too. Run it with --spec-version 2.4 to see "
    "the difference in process.",
    fix="Do not rely on sets made while streaming; finish context work before returning the response.",
)
def streaming_body():
    return wrapped(streaming_endpoint)


async def async_job():
    probe("background.async", stage)
    stage.set("set by async background")


def sync_job():
    probe("background.sync", stage)
    stage.set("set by sync background")


async def background_endpoint(request):
    stage.set("set in endpoint")
    tasks = BackgroundTasks()
    tasks.add_task(async_job)
    tasks.add_task(sync_job)
    return PlainTextResponse("ok", background=tasks)


@scenario(
    "background-task",
    summary="Background tasks see the endpoint's value; an async one's set even leaks outward",
    tags=["starlette", "responses", "leak"],
    expect={
        "background.async": {"stage": "set in endpoint"},
        "background.sync": {"stage": "set by async background"},
        "middleware.after": {"stage": "set by async background"},
    },
    naive={"middleware.after": {"stage": "set in endpoint"}},
    why="The response awaits its background tasks itself, after sending, in the "
    "request's task: an async job's set stays in the request's context and reaches "
    "the middleware around the app. A sync job runs in a thread-pool copy: it sees "
    "everything before it, and its set is lost.",
    fix="Treat background jobs as separate units of work: set and reset their own "
    "ContextVars in try/finally.",
)
def background_task():
    return wrapped(background_endpoint)
