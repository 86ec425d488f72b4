"""After the endpoint returns: streaming bodies and background tasks.

Both run after the endpoint, and where they run decides what they see and
whether their own sets reach the middleware around them.

Where a StreamingResponse iterates its body (starlette/responses.py):
- an async body, below ASGI spec 2.4 (and always before Starlette 0.42), in
  a child of an anyio task group, so in a copy of the request's context; from
  spec 2.4 in the request's own task;
- a `def` (sync) body through `iterate_in_threadpool` (added in
  encode/starlette#462), one `anyio.to_thread.run_sync(next, ...)` per chunk:
  every chunk, and the `finally` that runs on the last `next`, in a fresh
  copy of the context (anyio copies it per call).

Sources: a `def` body's reset failing per chunk in a thread-pool copy,
jaseci-labs/jac#6015; a token set before streaming and reset at the end of
the stream, openai/openai-agents-python#515 and #538 (FastAPI + uvicorn),
unclecode/crawl4ai#1917.  Left uncaught, that ValueError reaches uvicorn
after the first chunk was sent: it logs "Exception in ASGI application" and
closes the connection, so the client sees an incomplete chunked body.
"""

from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from ctxlab.probe import attempt, probe, raised
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
                "starlette>=0.42 with spec_version>=2.4 (--spec-version 2.4, uvicorn 0.28.0 to 0.32.0): "
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
    fix="Treat background jobs as separate units of work: set and reset their own ContextVars in try/finally.",
)
def background_task():
    return wrapped(background_endpoint)


STAGE_TOKEN_ELSEWHERE = raised(
    "ValueError", "<Token var=<ContextVar name='stage' default=None>> was created in a different Context"
)


def sync_body():
    token = stage.set("set in chunk 1")
    try:
        probe("chunk.1", stage)
        yield b"1"
        probe("chunk.2", stage)
        yield b"2"
    finally:
        attempt("body.finally", "reset", lambda: stage.reset(token))


async def sync_streaming_endpoint(request):
    stage.set("set in endpoint")
    return StreamingResponse(sync_body())


@scenario(
    "sync-streaming-generator",
    summary="A `def` streaming body runs each chunk in a fresh copy: sets vanish, reset in finally fails",
    tags=["starlette", "responses", "threads", "tokens", "lost"],
    expect={
        "chunk.1": {"stage": "set in chunk 1"},
        "chunk.2": {"stage": "set in endpoint"},
        "body.finally": {"reset": STAGE_TOKEN_ELSEWHERE},
        "middleware.after": {"stage": "set in endpoint"},
    },
    naive={"chunk.2": {"stage": "set in chunk 1"}, "body.finally": {"reset": None}},
    why="StreamingResponse turns a sync generator into an async one with "
    "iterate_in_threadpool: each next() is a separate run_in_threadpool call, and "
    "each call runs in a new copy of the context. The generator's frame survives "
    "from chunk to chunk, its context does not: the set made for chunk 1 is gone "
    "in chunk 2, and the finally (run by the last next()) holds a token from a copy "
    "that no longer exists.",
    fix="Write the body as an async generator (offload only the blocking calls "
    "inside it); see sync-streaming-generator-async-body.",
)
def sync_streaming_generator():
    return wrapped(sync_streaming_endpoint)


async def async_body():
    token = stage.set("set in chunk 1")
    try:
        probe("chunk.1", stage)
        yield b"1"
        probe("chunk.2", stage)
        yield b"2"
    finally:
        attempt("body.finally", "reset", lambda: stage.reset(token))


async def async_streaming_endpoint(request):
    stage.set("set in endpoint")
    return StreamingResponse(async_body())


@scenario(
    "sync-streaming-generator-async-body",
    summary="The fix: an async streaming body keeps its context from chunk to chunk",
    tags=["starlette", "responses", "fix"],
    expect={
        "chunk.1": {"stage": "set in chunk 1"},
        "chunk.2": {"stage": "set in chunk 1"},
        "body.finally": {"reset": None},
        "middleware.after": {"stage": "set in endpoint"},
    },
    why="An async body is iterated by one task from start to end (a task group "
    "child, or the request's task with spec 2.4), so every chunk and the finally "
    "share one context, and the token's reset restores the endpoint's value.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def sync_streaming_generator_async_body():
    return wrapped(async_streaming_endpoint)


async def reset_at_end_endpoint(request):
    token = stage.set("set in endpoint")

    async def body():
        try:
            yield b"chunk"
        finally:
            attempt("body.finally", "reset", lambda: stage.reset(token))

    return StreamingResponse(body())


@scenario(
    "streaming-reset-in-finally",
    summary="A token set in the endpoint cannot be reset in the streaming body's finally, below spec 2.4",
    tags=["starlette", "responses", "tokens", "spec-version"],
    expect={
        "body.finally": {
            "reset": Varies(
                "starlette>=0.42 with spec_version>=2.4: null; else ValueError (a different Context)",
                lambda env: None if streams_in_request_task(env) else STAGE_TOKEN_ELSEWHERE,
            )
        },
        "middleware.after": {
            "stage": Varies(
                'starlette>=0.42 with spec_version>=2.4: null; else "set in endpoint" (never reset)',
                lambda env: None if streams_in_request_task(env) else "set in endpoint",
            )
        },
    },
    naive={"body.finally": {"reset": None}, "middleware.after": {"stage": None}},
    why="The endpoint sets a var (a trace, a span, a log binding) and hands the token "
    "to the body, to reset when streaming ends. Below spec 2.4 (uvicorn except 0.28.0 "
    "to 0.32.0; every Starlette before 0.42) the body runs in a task group child: "
    "its finally runs in a copy, reset raises ValueError (uncaught, it cuts the "
    "response short after the first chunk), and the value is never reset in the "
    "request's context. With spec 2.4 and Starlette >= 0.42 the body streams in the request's "
    "task and the reset works. The same code works or crashes with the server.",
    fix="Set and reset in the same scope: set inside the body (from a value the "
    "endpoint passes in) and reset in its finally, or set/reset in pure ASGI "
    "middleware around the whole response; see streaming-reset-in-finally-set-in-body.",
)
def streaming_reset_in_finally():
    return wrapped(reset_at_end_endpoint)


async def set_in_body_endpoint(request):
    async def body(value):
        token = stage.set(value)
        try:
            yield b"chunk"
        finally:
            attempt("body.finally", "reset", lambda: stage.reset(token))

    return StreamingResponse(body("set in body"))


@scenario(
    "streaming-reset-in-finally-set-in-body",
    summary="The fix: the body sets the var itself, so its finally can reset it on any server",
    tags=["starlette", "responses", "tokens", "fix"],
    expect={"body.finally": {"reset": None}, "middleware.after": {"stage": None}},
    why="The set and the reset both run in whichever task iterates the body, so the "
    "token always belongs to the context that resets it.",
    fix="Nothing to fix: this is the pattern to copy.",
)
def streaming_reset_in_finally_set_in_body():
    return wrapped(set_in_body_endpoint)
