"""The user's own app, as a server would see it: what `probe` and `trace` share.

    with app_output_to_stderr():
        target = load("myapp.main:app", app_dir=Path("src"))
        replies = asyncio.run(send_all(target.asgi, [Request(path="/users/1")]))

- `load` imports MODULE:ATTR (or calls it with `factory=True`) and accepts
  any ASGI object a server would serve; `unwrap` finds the Starlette or
  FastAPI app inside wrappers such as `OpenTelemetryMiddleware(app)`.
- `serving` / `send_all` send requests through the object's own
  `__call__`, each in a fresh task with an empty context, with the lifespan
  run around them and its state handed to each request as uvicorn does;
  in process (`server="asgi"`) or through a real uvicorn on 127.0.0.1,
  all of one run's requests over one keep-alive connection.
- `describe_layer` names a middleware entry and its kind.

Nothing here imports a web framework at module level: `ctxlab --help`
imports the CLI, which must stay framework-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Iterator, Sequence

from ctxlab.errors import DiagnoseError, LifespanFailed, ServerFailed, described
from ctxlab.scenario import not_a_directory, suggest

__all__ = [
    "Client",
    "Layer",
    "Reply",
    "Request",
    "Target",
    "TargetError",
    "app_output_to_stderr",
    "describe_layer",
    "describe_object",
    "is_starlette",
    "load",
    "send_all",
    "serving",
    "unwrap",
]


class TargetError(DiagnoseError):
    """The user's app cannot be loaded or served (exit 2)."""


@dataclass(frozen=True)
class Layer:
    """One middleware layer: its name and kind (`base_http`,
    `http_decorator` for `@app.middleware("http")`, or `asgi`)."""

    name: str
    kind: str


@dataclass(frozen=True)
class Target:
    """A loaded app. `asgi` is what a server would serve; `app` the
    Starlette/FastAPI app inside it (None for a bare ASGI callable);
    `wrappers` the objects between them, outermost first."""

    spec: str
    asgi: Any
    app: Any
    wrappers: tuple[Any, ...]
    module: ModuleType
    root: Path


@dataclass(frozen=True)
class Request:
    """One request as a client would send it. `host` is the Host header
    (None: the server's own address)."""

    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    host: str | None = None
    body: bytes = b""


@dataclass
class Reply:
    """What came back: the status (None when no response started), and the
    exception the app raised, if it did (before or after its response, as
    in a yield dependency's teardown)."""

    status: int | None = None
    body: bytes = b""
    error: BaseException | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


# -- loading -------------------------------------------------------------------------
def load(spec: str, *, factory: bool = False, app_dir: Path = Path("."), server: str = "asgi") -> Target:
    """Import MODULE:ATTR from `app_dir` (joined to sys.path once), to be
    served by `server`.

    The module's prints at import go wherever stdout points then: callers
    wrap this in `app_output_to_stderr()`.  Raises TargetError with one line
    for anything a user must fix: a bad spec, an import that fails or calls
    sys.exit, a missing attribute, a factory that fails, something that is
    not an ASGI app."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise TargetError(f"expected MODULE:ATTR such as 'myapp.main:app', got {spec!r}")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise TargetError(
            f"{module_name!r} is not a module name: MODULE is written as Python imports it (myapp.main, not"
            " myapp/main.py), and --app-dir says where to import it from"
        )
    why = not_a_directory(app_dir)
    if why:
        raise TargetError(f"--app-dir {app_dir} {why}")
    # What ctxlab and the server import come from the environment, as
    # uvicorn's own imports do before it puts --app-dir first: an httpx.py
    # of the app's was imported in place of ctxlab's client.
    from ctxlab import servers  # noqa: F401

    if server == "uvicorn":
        import uvicorn  # noqa: F401
    if str(app_dir.resolve()) not in sys.path:
        sys.path.insert(0, str(app_dir.resolve()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TargetError(f"cannot import {module_name!r}: {exc} (searched {app_dir.resolve()} and sys.path)") from None
    except SystemExit as exc:
        raise TargetError(f"importing {module_name!r} called sys.exit({exc.code!r})") from None
    except KeyboardInterrupt:  # raised by the module: a real Ctrl-C kills the child (SIG_DFL) instead
        raise TargetError(f"importing {module_name!r} raised KeyboardInterrupt") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise TargetError(f"importing {module_name!r} failed: {described(exc)}") from None
    shadowed = _shadowed(module_name, app_dir.resolve())
    if shadowed:
        raise TargetError(shadowed)
    asgi = _attribute(module, module_name, attribute)
    if factory:
        if not callable(asgi):
            raise TargetError(f"{spec} is not callable, so it cannot be a --factory")
        try:
            asgi = asgi()
        except SystemExit as exc:
            raise TargetError(f"the factory {spec} called sys.exit({exc.code!r})") from None
        except KeyboardInterrupt:
            raise TargetError(f"the factory {spec} raised KeyboardInterrupt") from None
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"calling the factory {spec} failed: {described(exc)}") from None
    if not callable(asgi):
        raise TargetError(f"{spec} is a {type(asgi).__name__}, not an ASGI application")
    wrappers, app = unwrap(asgi)
    return Target(spec, asgi, app, tuple(wrappers), module, _own_root(module, app_dir))


def _shadowed(module_name: str, app_dir: Path) -> str | None:
    """Why MODULE is not the app's, when a module of its name in --app-dir
    lost to one imported before it (Python's `http`, `typing`): "has no
    attribute 'app'" alone would not say."""
    name = module_name.partition(".")[0]
    yours = next((path for path in (app_dir / f"{name}.py", app_dir / name) if path.exists()), None)
    imported = sys.modules[name]
    places = [getattr(imported, "__file__", None), *(getattr(imported, "__path__", None) or ())]
    if yours is None or any(place and Path(place).resolve().is_relative_to(app_dir) for place in places):
        return None
    where = places[0] or "Python itself"
    return (f"{name!r} is the module imported from {where} before yours, {yours}: Python imports a name once; "
            "rename your module")  # fmt: skip


def _attribute(module: ModuleType, module_name: str, path: str) -> Any:
    """ATTR as uvicorn reads it: `app`, or `holder.app`, each name looked up
    on the object before it."""
    found: Any = module
    names = path.split(".")
    for depth, name in enumerate(names):
        try:
            found = getattr(found, name)
        except AttributeError:
            public = [known for known in dir(found) if not known.startswith("_")]
            owner = f"module {module_name!r}" if depth == 0 else f"{module_name}:{'.'.join(names[:depth])}"
            raise TargetError(f"{owner} has no attribute {name!r}{suggest(name, public, otherwise='')}") from None
        except Exception as exc:  # noqa: BLE001 - a property or module __getattr__ of the user's failed
            raise TargetError(
                f"reading {module_name}:{'.'.join(names[: depth + 1])} failed: {described(exc)}"
            ) from None
    return found


def _attribute_or_none(obj: Any, name: str) -> Any:
    """`obj.name`, None if it has none.  Any exception means none, not only
    AttributeError: an unbound proxy (werkzeug's LocalProxy) raises
    RuntimeError for every attribute."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - the app's own __getattr__
        return None


def is_starlette(obj: Any) -> bool:
    """A Starlette (or FastAPI) application: it has a middleware list and
    builds its stack from it."""
    return _attribute_or_none(obj, "user_middleware") is not None and (
        _attribute_or_none(obj, "build_middleware_stack") is not None
    )


def unwrap(asgi: Any) -> tuple[list[Any], Any]:
    """The wrappers around the Starlette/FastAPI app inside `asgi`,
    outermost first, and that app (None if there is none).  Wrappers keep
    what they wrap in `.app`, as Starlette's, OpenTelemetry's and Sentry's
    middleware do."""
    wrappers: list[Any] = []
    current = asgi
    while not is_starlette(current):
        inner = _attribute_or_none(current, "app")
        if inner is None or not callable(inner) or len(wrappers) > 50:
            return wrappers, None
        wrappers.append(current)
        current = inner
    return wrappers, current


def _own_root(module: ModuleType, app_dir: Path) -> Path:
    """The app's own code: the top-level package of MODULE, else the
    directory it was imported from."""
    file = getattr(module, "__file__", None)
    if file is None:  # built into Python (`builtins`): none of it is the app's
        return app_dir.resolve()
    top = sys.modules.get(module.__name__.partition(".")[0], module)
    here = Path(file).resolve()
    # A namespace package (no __init__.py) has no file, and may span several
    # directories: its own is the one that holds MODULE.
    for directory in getattr(top, "__path__", None) or ():
        if here.is_relative_to(Path(directory).resolve()):
            return Path(directory).resolve()
    return here.parent


def describe_layer(middleware: Any) -> Layer:
    """Name and kind of a `Middleware(...)` entry of `user_middleware`."""
    options = getattr(middleware, "kwargs", None) or getattr(middleware, "options", {})
    dispatch = options.get("dispatch")
    cls = middleware.cls
    if dispatch is not None and _is_base_http(cls):
        return Layer(getattr(dispatch, "__name__", repr(dispatch)), "http_decorator")
    return Layer(getattr(cls, "__name__", repr(cls)), "base_http" if _is_base_http(cls) else "asgi")


def describe_object(layer: Any) -> Layer:
    """Name and kind of an instantiated layer (a wrapper, a Mount's middleware)."""
    cls = type(layer)
    dispatch = getattr(layer, "dispatch_func", None)
    if _is_base_http(cls) and dispatch is not None and getattr(dispatch, "__self__", None) is not layer:
        return Layer(getattr(dispatch, "__name__", repr(dispatch)), "http_decorator")
    return Layer(cls.__name__, "base_http" if _is_base_http(cls) else "asgi")


def _is_base_http(cls: Any) -> bool:
    from starlette.middleware.base import BaseHTTPMiddleware

    return isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware)


# -- the app's output --------------------------------------------------------------------
@contextlib.contextmanager
def app_output_to_stderr() -> Iterator[None]:
    """The app's prints, and log handlers it creates meanwhile on
    sys.stdout, go to stderr: ctxlab's stdout holds only its own result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# -- sending requests as a server would ------------------------------------------------
class Client:
    """Sends requests to an app being served (see `serving`): in process, or
    over HTTP with `http`, one client whose keep-alive connection carries
    every request, as a browser's or a proxy's would."""

    def __init__(self, app: Any, state: dict[str, Any] | None, http: Any, grace: float) -> None:
        self._app, self._state, self._http, self._grace = app, state, http, grace

    async def send(self, request: Request) -> Reply:
        """Send one request and wait until the app has finished with it
        (background tasks included, in process)."""
        if self._http is None:
            return await _in_process(self._app, request, self._state, self._grace)
        return await _over_http(self._http, request)


@contextlib.asynccontextmanager
async def serving(app: Any, *, server: str, lifespan: bool, timeout: float = 10.0) -> AsyncIterator[Client]:
    """Serve `app` for the duration of the block: in process
    (`server="asgi"`) or on a real uvicorn on 127.0.0.1 (`"uvicorn"`).
    With `lifespan`, startup runs first and shutdown last, and each request
    gets a shallow copy of the lifespan state in `scope["state"]`, as uvicorn
    gives it.  An app still busy `timeout` seconds after its response (a
    background task) is cancelled."""
    from ctxlab import servers

    if server == "uvicorn":
        try:
            async with servers.uvicorn_server(app, lifespan=lifespan, options={}, timeout=timeout) as base_url:
                # One client for the whole run: its requests share a
                # keep-alive connection, where uvicorn can start a request
                # in a copy of the previous one's context.
                async with servers.server_client(base_url, timeout) as http:
                    yield Client(app, None, http, timeout)
        except ServerFailed as exc:
            raise TargetError(str(exc)) from None
        return
    if server != "asgi":
        raise TargetError(f"unknown server {server!r}; expected 'asgi' or 'uvicorn'")
    if not lifespan:
        yield Client(app, None, None, timeout)
        return
    try:
        async with servers.lifespan(app) as state:
            yield Client(app, state, None, timeout)
    except LifespanFailed as exc:
        raise TargetError(str(exc)) from None


async def send_all(
    app: Any, requests: Sequence[Request], *, server: str = "asgi", lifespan: bool = False
) -> list[Reply]:
    """Serve `app` and send `requests` one after another."""
    async with serving(app, server=server, lifespan=lifespan) as client:
        return [await client.send(request) for request in requests]


async def _in_process(app: Any, request: Request, state: dict[str, Any] | None, grace: float) -> Reply:
    """One request straight into `app.__call__`, in a new task started in an
    empty context, with the scope, receive and send a server gives."""
    path, _, query = request.path.partition("?")
    # A Host among --header replaces the default one, as httpx does on a server.
    given_host = any(name.lower() == "host" for name, _ in request.headers)
    headers = [*([] if given_host else [("host", request.host or "127.0.0.1:8000")]), *request.headers]
    if request.body:
        headers.append(("content-length", str(len(request.body))))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": request.method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }
    if state is not None:
        scope["state"] = dict(state)
    reply = Reply()
    done = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await done.wait()  # like a server: the client is there until the response is complete
        return {"type": "http.disconnect"}

    body = io.BytesIO()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            body.write(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    async def call() -> None:
        try:
            await app(scope, receive, send)
        # uvicorn catches BaseException here; all but cancellation, which is ours.
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - a server logs it; the caller reports it
            reply.error = exc
        finally:
            done.set()

    loop = asyncio.get_running_loop()
    task = contextvars.Context().run(loop.create_task, call())
    await done.wait()
    # Background tasks run inside the app's call, after the response; one
    # that never ends must not keep ctxlab waiting.
    await asyncio.wait({task}, timeout=grace)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
        reply.error = TimeoutError(f"still running {grace:g} s after its response; cancelled")
    reply.body = body.getvalue()
    return reply


async def _over_http(http: Any, request: Request) -> Reply:
    import httpx

    # As bytes, the way the in-process request sends them: httpx would
    # encode str as ASCII (an é failed), and a dict kept one of two headers
    # of the same name.
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers]
    if request.host:
        headers.append((b"host", request.host.encode("latin-1")))
    try:
        response = await http.request(request.method, request.path, headers=headers, content=request.body)
    except httpx.HTTPError as exc:
        return Reply(error=exc)
    return Reply(response.status_code, response.content, headers=list(response.headers.items()))
