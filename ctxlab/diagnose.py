"""`ctxlab probe`: which layers of the user's own app cut ContextVar propagation.

Every layer a request meets gets a transparent probe just outside it:
wrappers around the app (`OpenTelemetryMiddleware(app)`), what a library
adds around the app's stack (OpenTelemetry's FastAPI instrumentation,
Sentry's patched `Starlette.__call__`), the app's middleware, and inside the
router the middleware of `Mount(..., middleware=...)` and of mounted
sub-apps.  The request then goes through the app's own `__call__`, so
`scope["app"]`, `app.state` and the error middleware behave as in
production.  Probes are spliced into the app's objects for the run and
taken out again afterwards.

At the leaf of the path (the route `--path` matches, or without it a probe
route answering inside each app and each mount), a fresh ContextVar `up` is
set in the task and context the endpoint runs in.  A layer sees the
endpoint's values when the probe outside it, which runs in the same task
and context as the layer's code after `call_next`, still sees `up` once
the layer returned.  Downward, each probe sets a ContextVar of its own
before calling its layer; the layer's values reach the endpoint when the
leaf sees it.

What was not observed (the request failed before or inside a layer) is
None with a note, and never blamed.
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from ctxlab import target as targets
from ctxlab.errors import described
from ctxlab.target import Request, TargetError

PROBE_PATH = "/__ctxlab_probe__"

# Known libraries whose BaseHTTPMiddleware has a pure ASGI twin in the same
# package (from their READMEs): the fix a user can apply in one line.
PURE_ASGI_TWINS = {
    "starlette_context.middleware.context_middleware.ContextMiddleware": "starlette_context.middleware.RawContextMiddleware",
    "slowapi.middleware.SlowAPIMiddleware": "slowapi.middleware.SlowAPIASGIMiddleware",
}

# Binders that set ContextVars on the caller's behalf and leave them set
# (structlog's bound_contextvars resets on exit, so it is not one).
BINDERS = {("structlog.contextvars", "bind_contextvars")}


@dataclass
class Layer:
    """One layer on the request's path and what it was seen to do."""

    name: str
    kind: str  # base_http | http_decorator | asgi
    mount: str | None = None
    sees_endpoint_values: bool | None = None
    reaches_endpoint: bool | None = None
    note: str | None = None
    origin: str = field(default="", repr=False)  # module.qualname of its class

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.mount is not None:
            document["mount"] = self.mount
        document["sees_endpoint_values"] = self.sees_endpoint_values
        document["reaches_endpoint"] = self.reaches_endpoint
        if self.note is not None:
            document["note"] = self.note
        return document


@dataclass
class Finding:
    file: str
    line: int
    kind: str  # sync-set | sync-yield-reset | executor-no-copy
    message: str


@dataclass
class Diagnosis:
    app: str
    layers: list[Layer] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    culprits: list[str] = field(default_factory=list)
    status: int | None = None
    notes: list[str] = field(default_factory=list)  # one line each, for stderr
    reached_endpoints: bool = True  # every probe request reached an endpoint

    @property
    def complete(self) -> bool:
        """Every probe request reached an endpoint and every layer was observed."""
        return self.reached_endpoints and all(layer.sees_endpoint_values is not None for layer in self.layers)

    @property
    def fix(self) -> str:
        culprits = [layer for layer in self.layers if layer.name in self.culprits]
        if not culprits:
            if not self.complete:
                return "Nothing to blame among the layers observed; the others were not observed (see their notes)."
            return "Nothing to fix: every layer sees the endpoint's values and reaches the endpoint."
        text = []
        twins = [
            f"{layer.name} -> {PURE_ASGI_TWINS[layer.origin]}" for layer in culprits if layer.origin in PURE_ASGI_TWINS
        ]
        if twins:
            text.append(f"Use the library's pure ASGI middleware instead: {'; '.join(twins)}.")
        cut = [layer.name for layer in culprits if layer.kind != "asgi" and layer.origin not in PURE_ASGI_TWINS]
        if cut:
            text.append(
                f"{', '.join(cut)} run(s) the rest of the app in a child task (BaseHTTPMiddleware), so values "
                "set by the endpoint or dependencies never come back to them. Rewrite them as pure ASGI "
                "middleware, pass the value on request.state, or set it in a layer outside them, before call_next."
            )
        other = [layer.name for layer in culprits if layer.kind == "asgi"]
        if other:
            text.append(f"{', '.join(other)} run(s) the inner app in another context: values do not cross it.")
        return " ".join(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "app": self.app,
            "layers": [layer.to_json() for layer in self.layers],
            "verdict": {"ok": not self.culprits, "culprits": self.culprits, "fix": self.fix},
            "findings": [vars(finding) for finding in self.findings],
        }


# -- the probes -------------------------------------------------------------------------
@dataclass
class _Record:
    """What the probes saw during one request."""

    trail: list[Any] = field(default_factory=list)  # probe keys entered, "router" marks, in order
    up: dict[int, bool] = field(default_factory=dict)
    raised: dict[int, tuple[BaseException, bool]] = field(default_factory=dict)
    leaf: dict[int, bool] | None = None
    started: bool = False


class _Probes:
    """Probes spliced into an app's objects, and what they record."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.up = contextvars.ContextVar("ctxlab.up")
        self.down: dict[int, contextvars.ContextVar] = {}
        self.layers: dict[int, Layer] = {}
        self.order: list[int] = []
        self.mounts: list[str] = []
        self.allowed_hosts: list[str] = []
        self.record = _Record()
        self._undo: list[tuple[Any, str, Any]] = []

    def key(self, layer: Layer) -> int:
        key = len(self.layers)
        self.layers[key] = layer
        self.down[key] = contextvars.ContextVar(f"ctxlab.down.{key}")
        return key

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        self._undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        for obj, name, value in reversed(self._undo):
            setattr(obj, name, value)
        self._undo.clear()

    def outside(self, holder: Any, layer: Layer) -> None:
        """Put a probe for `layer` in `holder.app` (which holds the layer)."""
        key = self.key(layer)
        self.order.append(key)
        self.setattr(holder, "app", _ProbeLayer(holder.app, probes=self, key=key))

    def see_leaf(self) -> None:
        self.record.leaf = {key: var.get(None) is not None for key, var in self.down.items()}
        self.up.set("endpoint")


class _ProbeLayer:
    def __init__(self, app: Any, probes: _Probes, key: int) -> None:
        self.app, self.probes, self.key = app, probes, key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = self.probes.record
        record.trail.append(self.key)
        self.probes.down[self.key].set(True)

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                record.started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:
            record.raised.setdefault(self.key, (exc, record.started))
            raise
        record.up[self.key] = self.probes.up.get(None) is not None


def _route_path(scope) -> str:
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root) :] if root and path.startswith(root) else path


class _Leaf:
    """Innermost in each app and mount: marks that the request reached its
    router, and without --path answers the probe route itself."""

    def __init__(self, app: Any, probes: _Probes) -> None:
        self.app, self.probes = app, probes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.probes.record.trail.append("router")
            if self.probes.path is None and _route_path(scope) == PROBE_PATH:
                self.probes.see_leaf()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ctxlab"})
                return
        await self.app(scope, receive, send)


class _RouteLeaf:
    """Wraps a route's ASGI app: the endpoint runs inside, in this context."""

    def __init__(self, app: Any, probes: _Probes) -> None:
        self.app, self.probes = app, probes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.probes.see_leaf()
        await self.app(scope, receive, send)


def _described(layer: targets.Layer, mount: str | None, cls: Any) -> Layer:
    return Layer(
        layer.name, layer.kind, mount, origin=f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}"
    )


def _splice_app(probes: _Probes, holder: Any, app: Any, mount: str | None) -> None:
    """Probes around `app`'s whole stack, `holder.app` being `app`."""
    from starlette.middleware import Middleware

    if any(
        getattr(vars(cls).get("__call__"), "__name__", "") == "_sentry_patched_asgi_app" for cls in type(app).__mro__
    ):
        # Sentry's Starlette integration wraps every Starlette.__call__ in a
        # SentryAsgiMiddleware built per request: a layer with no object
        # (FastAPI.__call__ reaches it through super()).
        probes.outside(
            holder,
            Layer("SentryAsgiMiddleware", "asgi", mount, origin="sentry_sdk.integrations.asgi.SentryAsgiMiddleware"),
        )
    original = app.user_middleware
    entries = []
    for middleware in original:
        seen = targets.describe_layer(middleware)
        options = getattr(middleware, "kwargs", None) or getattr(middleware, "options", {})
        probes.allowed_hosts += list(options.get("allowed_hosts") or [])
        entries.append((_described(seen, mount, middleware.cls), middleware))
    probe_keys = [probes.key(layer) for layer, _ in entries]
    interleaved = []
    for key, (_, middleware) in zip(probe_keys, entries):
        interleaved += [Middleware(_ProbeLayer, probes=probes, key=key), middleware]
    interleaved.append(Middleware(_Leaf, probes=probes))
    app.user_middleware = interleaved
    try:
        stack = app.build_middleware_stack()
    except Exception as exc:  # noqa: BLE001 - a middleware of the app's failed as it was built
        # Starlette builds the stack on the first request, outside its error
        # handling: every request to the app would fail the same way.
        where = f"the app mounted at {mount}" if mount else "the app"
        raise TargetError(f"building the middleware of {where} failed: {described(exc)}") from None
    finally:
        app.user_middleware = original
    # What a library builds around the user's middleware (OpenTelemetry's
    # FastAPI instrumentation replaces build_middleware_stack) is met first;
    # the framework's own layers there (FastAPI's telemetry and body limit)
    # are not the user's, like ServerErrorMiddleware.
    parent, current = None, stack
    while not isinstance(current, (_ProbeLayer, _Leaf)) and hasattr(current, "app"):
        if parent is not None and not _framework_own(current):
            probes.outside(parent, _described(targets.describe_object(current), mount, type(current)))
        parent, current = current, current.app
    probes.order += probe_keys
    probes.setattr(app, "middleware_stack", stack)
    _splice_routes(probes, getattr(app, "router", app).routes, mount or "")


def _framework_own(layer: Any) -> bool:
    return type(layer).__module__.partition(".")[0] in ("starlette", "fastapi")


def _splice_routes(probes: _Probes, routes: list[Any], prefix: str) -> None:
    from starlette.routing import Host, Mount

    for route in routes:
        if isinstance(route, Mount):
            full = prefix + route.path
            holder, current, base = route, route.app, _mounted(getattr(route, "_base_app", route.app))
            while current is not base and hasattr(current, "app"):
                probes.allowed_hosts += list(getattr(current, "allowed_hosts", []) or [])
                probes.outside(holder, _described(targets.describe_object(current), full, type(current)))
                holder = current
                current = current.app
            # Only an app or router of Starlette's can hold a probe route;
            # other mounted apps (StaticFiles, a WSGI app) are not probed.
            if targets.is_starlette(base):
                probes.mounts.append(full)
                _splice_app(probes, holder, base, full)
            elif hasattr(base, "routes"):
                probes.mounts.append(full)
                probes.setattr(holder, "app", _Leaf(holder.app, probes))
                _splice_routes(probes, base.routes, full)
        elif isinstance(route, Host) and hasattr(route.app, "routes"):
            # A Host route's router serves the requests for its host (--host
            # names it): its routes are the app's, at the same paths, behind
            # the app's own router and its leaf.  (A Starlette app there: its
            # own middleware is not probed.)
            _splice_routes(probes, route.app.routes, prefix)
        elif probes.path is not None and hasattr(route, "app"):
            # Any other route that took the request reached its endpoint:
            # Route, WebSocketRoute, or a route class of the app's own.
            probes.setattr(route, "app", _RouteLeaf(route.app, probes))


def _mounted(app: Any) -> Any:
    """The Starlette app or router inside middleware wrapped around a mounted
    app by hand (`Mount("/v2", app=TrustedHostMiddleware(v2))`), whose
    layers are then the mount's like those of `Mount(middleware=...)`;
    `app` itself when there is none to probe inside (StaticFiles, a WSGI app)."""
    inner = app
    while not _probeable(inner) and hasattr(inner, "app"):
        inner = inner.app
    return inner if _probeable(inner) else app


def _probeable(app: Any) -> bool:
    return targets.is_starlette(app) or hasattr(app, "routes")


def splice(target: targets.Target, path: str | None) -> tuple[_Probes, Any]:
    """Probes around every layer of `target`; the object to serve."""
    probes = _Probes(path)
    box = SimpleNamespace(app=target.asgi)
    holder = box
    try:
        for wrapper in target.wrappers:
            probes.outside(holder, _described(targets.describe_object(wrapper), None, type(wrapper)))
            holder = wrapper
        _splice_app(probes, holder, target.app, None)
    except BaseException:
        probes.restore()
        raise
    return probes, box.app


# -- reading what the probes saw ----------------------------------------------------------------
def _judge(probes: _Probes, records: list[tuple[Request, _Record, targets.Reply]], diagnosis: Diagnosis) -> None:
    """Each layer's values from the first request that passed it and
    reached an endpoint; a note for each layer that none observed."""
    observed: set[int] = set()
    culprits: set[int] = set()
    for request, record, reply in records:
        entered = [key for key in probes.order if key in record.trail]
        what = f"{request.method} {request.path}"
        if isinstance(reply.error, TimeoutError):
            diagnosis.notes.append(f"the app was {reply.error} (a background task?)")
        note = None
        if record.raised:
            # The innermost probe saw the exception first, where it was raised.
            exc, after = next(iter(record.raised.values()))
            after_text = " after the response was sent" if after else ""
            if record.leaf is None:  # raised by the innermost layer it entered, before any route
                after_text = f" in {probes.layers[entered[-1]].name}, before the endpoint"
            note = f"{what} raised {type(exc).__name__}{after_text}; not observed"
            diagnosis.notes.append(f"{what} raised {type(exc).__name__}{after_text}: {exc}")
            diagnosis.reached_endpoints &= record.leaf is not None
        elif record.leaf is None:
            note = _not_reached(probes, record, reply, what, diagnosis)
        if record.leaf is not None:
            for key in (key for key in entered if key in record.up and key not in observed):
                observed.add(key)
                probes.layers[key].sees_endpoint_values = record.up[key]
                probes.layers[key].reaches_endpoint = record.leaf[key]
            culprits |= _cuts(probes, [key for key in entered if key in record.up], record)
        for key in entered:
            if key not in observed and probes.layers[key].note is None:
                probes.layers[key].note = note
    diagnosis.layers = [probes.layers[key] for key in probes.order]
    for layer in diagnosis.layers:
        if layer.sees_endpoint_values is None and layer.note is None:
            layer.note = "the probe request did not pass through it"
    diagnosis.culprits = [probes.layers[key].name for key in probes.order if key in culprits]


def _not_reached(probes: _Probes, record: _Record, reply: targets.Reply, what: str, diagnosis: Diagnosis) -> str:
    """Who answered a request that reached no endpoint: the note for the
    layers it passed; one line for the user."""
    diagnosis.reached_endpoints = False
    answered = record.trail[-1] if record.trail else "router"
    if answered == "router":
        diagnosis.notes.append(
            f"{what} answered {reply.status}: no route of the app took it; pass --path with one of your routes"
        )
        return f"{what} matched no route (status {reply.status}); not observed"
    name = probes.layers[answered].name
    diagnosis.notes.append(f"{name} answered {what} with {reply.status}; {_what_to_pass(reply.status)}")
    return f"{name} answered {what} with {reply.status} before the endpoint; not observed"


def _cuts(probes: _Probes, chain: list[int], record: _Record) -> set[int]:
    """On one request's chain of observed layers (outermost first): the
    innermost layer that does not see the endpoint's values, the
    BaseHTTPMiddleware layers outside it (they cut by construction, though
    nothing outside a cut can show it), and the innermost layer whose
    values do not reach the endpoint."""
    cuts: set[int] = set()
    blind = [key for key in chain if not record.up[key]]
    if blind:
        cut = blind[-1]
        cuts.add(cut)
        cuts |= {key for key in blind if probes.layers[key].kind != "asgi"}
    lost = [key for key in chain if not record.leaf[key]]
    if lost:
        cuts.add(lost[-1])
    return cuts


def _what_to_pass(status: int | None) -> str:
    if status == 400:
        return "pass --host with a host it allows"
    if status in (401, 403):
        return "pass the credentials it expects with --header 'Authorization: ...'"
    if status == 429:
        return "it limits the rate: raise its limit for the probe or try again later"
    if status in (405, 415, 422):
        return "pass --method, --header 'Content-Type: ...' or --data as the route expects"
    return "pass --path, --method, --header or --data so that it lets the request through"


def _probe_host(allowed: list[str]) -> str | None:
    """A host TrustedHostMiddleware allows (None: any will do)."""
    if not allowed or "*" in allowed:
        return None
    first = allowed[0]
    return "probe" + first[1:] if first.startswith("*") else first


def diagnose(
    target: str,
    *,
    factory: bool = False,
    app_dir: Path = Path("."),
    path: str | None = None,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    host: str | None = None,
    data: bytes = b"",
    lifespan: bool = False,
    server: str = "asgi",
) -> Diagnosis:
    """Load `target`, send the probe request(s) through it and report what
    every layer saw.  The app's output goes to stderr meanwhile."""
    with targets.app_output_to_stderr():
        loaded = targets.load(target, factory=factory, app_dir=app_dir, server=server)
        if loaded.app is None:
            raise TargetError(f"{target} is an ASGI callable with no Starlette or FastAPI application inside")
        probes, served = splice(loaded, path)
        try:
            host = host or _probe_host(probes.allowed_hosts)
            paths = [path] if path else [PROBE_PATH] + [mount + PROBE_PATH for mount in probes.mounts]
            requests = [Request(method if path else "GET", p, headers, host, data) for p in paths]
            if path:
                keep = {key for key in probes.order if _on_path(probes.layers[key].mount, path)}
                probes.order = [key for key in probes.order if key in keep]
            records = asyncio.run(_send(probes, served, requests, server, lifespan))
        finally:
            probes.restore()
        diagnosis = Diagnosis(target, status=records[0][2].status)
        _judge(probes, records, diagnosis)
        diagnosis.findings = scan(loaded)
    return diagnosis


def _on_path(mount: str | None, path: str) -> bool:
    return mount is None or path == mount or path.startswith(mount + "/")


async def _send(probes: _Probes, served: Any, requests: list[Request], server: str, lifespan: bool):
    records = []
    async with targets.serving(served, server=server, lifespan=lifespan, timeout=5.0) as client:
        for request in requests:
            probes.record = _Record()
            reply = await client.send(request)
            records.append((request, probes.record, reply))
    return records


# -- static findings --------------------------------------------------------------------------------
def _own_files(loaded: targets.Target) -> dict[Path, str]:
    """The sources of the app's own modules, each read once: the files of
    imported modules under its root, never a virtualenv, site-packages or
    tests.  Nothing is parsed here: parsing costs ~40 ms per 1,000 lines,
    and the scan needs a few functions and the files that name
    run_in_executor, not whole packages."""
    sources = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if not path.is_relative_to(loaded.root):
            continue
        parts = set(path.relative_to(loaded.root).parts[:-1])
        if parts & {".venv", "venv", "site-packages", "node_modules", "tests", "test", "__pycache__"}:
            continue
        try:
            # As Python reads it: a PEP 263 coding line, a byte order mark.
            sources[path] = importlib.util.decode_source(path.read_bytes())
        except (SyntaxError, UnicodeDecodeError, OSError):  # an encoding Python would refuse too
            continue
    return sources


def _parsed(source: str, path: Path) -> ast.Module | None:
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError:
        return None


def _routes(app: Any) -> list[Any]:
    from starlette.routing import Mount

    found = []
    for route in getattr(app, "routes", []):
        if isinstance(route, Mount):
            found += _routes(_mounted(getattr(route, "_base_app", route.app)))
        elif hasattr(route, "endpoint"):
            found.append(route)
    return found


def _sync_functions(route: Any) -> list[tuple[Callable, str]]:
    """The route's `def` endpoint and `def` dependencies, sub-dependencies
    included: code FastAPI and Starlette run in a thread-pool copy."""
    found = []
    endpoint = route.endpoint
    if inspect.isfunction(endpoint) and not inspect.iscoroutinefunction(endpoint):
        found.append((endpoint, "endpoint"))
    pending = list(getattr(getattr(route, "dependant", None), "dependencies", []))
    while pending:
        dependant = pending.pop()
        call = dependant.call
        if inspect.isfunction(call) and not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)):
            found.append((call, "dependency"))
        pending += dependant.dependencies
    return found


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):  # no builtin is a ContextVar or a binder: the namespace is enough
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _node_of(function: Callable) -> ast.FunctionDef | None:
    """The function's definition, parsed from its own lines alone."""
    try:
        lines, first = inspect.getsourcelines(function)
    except (OSError, TypeError):
        return None
    if first != function.__code__.co_firstlineno:  # a wrapper's: inspect found the function it wraps
        return None
    source = "".join(lines)
    indented = source[:1].isspace()
    # An indented definition (a method, a nested function) parses as the
    # body of an `if` whatever its strings hold, where dedenting could fail.
    tree = _parsed("if 1:\n" + source if indented else source, Path(function.__code__.co_filename))
    if tree is None or not tree.body:
        return None
    node = tree.body[0].body[0] if indented else tree.body[0]
    ast.increment_lineno(tree, first - 1 - indented)
    return node if isinstance(node, ast.FunctionDef) and node.name == function.__name__ else None


def scan(loaded: targets.Target) -> list[Finding]:
    """Known pitfalls in the app's own code, with file and line."""
    sources = _own_files(loaded)
    findings: dict[tuple[str, int, str], Finding] = {}

    def add(path: Path, line: int, kind: str, message: str) -> None:
        where = str(path.relative_to(loaded.root.parent if _is_package(loaded) else loaded.root))
        findings.setdefault((where, line, kind), Finding(where, line, kind, message))

    for route in _routes(loaded.app):
        for function, role in _sync_functions(route):
            path = Path(inspect.getsourcefile(function) or "").resolve()
            node = _node_of(function) if path in sources else None
            if node is None:
                continue
            namespace = {**function.__globals__, **_closure(function)}
            generator = inspect.isgeneratorfunction(function)
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                func = call.func
                if isinstance(func, ast.Attribute) and func.attr in ("set", "reset"):
                    var = _resolve(func.value, namespace)
                    if not isinstance(var, contextvars.ContextVar):
                        continue
                    if func.attr == "set":
                        add(path, call.lineno, "sync-set",
                            f"`def` {role} {function.__name__}() sets {var.name}: it runs in a thread-pool copy of "
                            "the context, so the value is lost when it returns; make it `async def`.")  # fmt: skip
                    elif role == "dependency" and generator:
                        add(path, call.lineno, "sync-yield-reset",
                            f"`def` yield dependency {function.__name__}() resets {var.name}: FastAPI enters and "
                            "exits it in two different thread-pool copies, so reset raises ValueError; make it "
                            "`async def`.")  # fmt: skip
                    continue
                binder = _resolve(func, namespace)
                if (getattr(binder, "__module__", None), getattr(binder, "__name__", None)) in BINDERS:
                    add(path, call.lineno, "sync-set",
                        f"`def` {role} {function.__name__}() calls {binder.__name__}: it binds ContextVars in a "
                        "thread-pool copy of the context, so they are lost when it returns; make it `async def`.")  # fmt: skip
    for path, source in sources.items():
        tree = _parsed(source, path) if "run_in_executor" in source else None
        pools = _process_pools(tree) if tree else set()
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "run_in_executor":
                if (
                    "copy_context" not in ast.unparse(node)
                    and not _runs_in_context(node)
                    and not _sends_to_a_process_pool(node, pools)
                ):
                    add(path, node.lineno, "executor-no-copy",
                        "run_in_executor without copy_context(): the job runs in the worker thread's own "
                        "context and sees none of the caller's ContextVars; submit copy_context().run.")  # fmt: skip
    return sorted(findings.values(), key=lambda f: (f.file, f.line))


def _is_package(loaded: targets.Target) -> bool:
    return "." in loaded.module.__name__ or hasattr(loaded.module, "__path__")


def _closure(function: Callable) -> dict[str, Any]:
    cells = function.__closure__ or ()
    values = {}
    for name, cell in zip(function.__code__.co_freevars, cells):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return values


def _is_process_pool(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Call) and "ProcessPoolExecutor" in ast.unparse(node.func)


def _process_pools(tree: ast.Module) -> set[str]:
    """Names the module binds to a ProcessPoolExecutor (`with ... as pool`,
    `pool = ...`, `self.pool = ...`): a job sent there runs in another
    process, where no context of this one can follow it (a Context cannot
    be pickled), so copy_context() is no fix and the call no finding."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.withitem) and node.optional_vars and _is_process_pool(node.context_expr):
            names.add(ast.unparse(node.optional_vars))
        elif isinstance(node, ast.Assign) and _is_process_pool(node.value):
            names.update(ast.unparse(target) for target in node.targets)
        elif isinstance(node, ast.AnnAssign) and _is_process_pool(node.value):
            names.add(ast.unparse(node.target))
    return names


def _sends_to_a_process_pool(call: ast.Call, pools: set[str]) -> bool:
    keywords = [keyword.value for keyword in call.keywords if keyword.arg == "executor"]
    executor = (call.args or keywords or [None])[0]
    return executor is not None and (_is_process_pool(executor) or ast.unparse(executor) in pools)


def _runs_in_context(call: ast.Call) -> bool:
    """`run_in_executor(pool, ctx.run, job)`: a context's run method."""
    return len(call.args) > 1 and isinstance(call.args[1], ast.Attribute) and call.args[1].attr == "run"
