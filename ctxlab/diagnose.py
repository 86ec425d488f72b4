"""`ctxlab probe`: which layers of the user's own app cut ContextVar propagation.

The app's middleware stack is rebuilt, by Starlette's own
`build_middleware_stack`, with a transparent probe layer just outside each
user middleware and one around the router:

    ServerError, P0, M0, P1, M1, ... Pn, ExceptionMiddleware, router

Upward: the innermost layer sets a fresh ContextVar (on its own probe route,
or after the user's route returned).  M_i sees the endpoint's values when
P_i, which runs in the same task and context as M_i's code after
`call_next`, sees that value once M_i returned.

Downward: each P_i sets a fresh ContextVar of its own before calling M_i;
M_i's values reach the endpoint when the innermost layer sees it.
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import importlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctxlab.errors import DiagnoseError
from ctxlab.scenario import suggest

PROBE_PATH = "/__ctxlab_probe__"


@dataclass
class Layer:
    name: str
    kind: str  # base_http | http_decorator | asgi
    sees_endpoint_values: bool = False
    reaches_endpoint: bool = False


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
    status: int = 200

    @property
    def first_cut(self) -> int | None:
        """The innermost layer that cannot see the endpoint's values while
        every layer inside it can: where the values stop, as observed."""
        for i in reversed(range(len(self.layers))):
            if not self.layers[i].sees_endpoint_values:
                return i
        return None

    @property
    def culprits(self) -> list[str]:
        """Layers that stop a value: the observed first cut, the
        BaseHTTPMiddleware layers outside it (nothing can be observed
        outside a cut, but they cut by construction), and any layer whose
        own values do not reach the endpoint."""
        cut = self.first_cut
        names = []
        for i, layer in enumerate(self.layers):
            cuts = i == cut or (cut is not None and i < cut and layer.kind != "asgi")
            if cuts or not layer.reaches_endpoint:
                names.append(layer.name)
        return names

    @property
    def fix(self) -> str:
        culprits = [layer for layer in self.layers if layer.name in self.culprits]
        if not culprits:
            return "Nothing to fix: every layer sees the endpoint's values and reaches the endpoint."
        cut = [layer.name for layer in culprits if layer.kind in ("base_http", "http_decorator")]
        outside = [layer.name for layer in self.layers[: self.first_cut or 0] if layer.name not in cut]
        text = []
        if cut:
            text.append(
                f"{', '.join(cut)} run(s) the rest of the app in a child task (BaseHTTPMiddleware), so values "
                f"set by the endpoint or dependencies never come back to them"
                + (f", nor to the layers wrapping them ({', '.join(outside)})" if outside else "")
                + ". Rewrite them as pure ASGI middleware, pass the value on request.state, "
                "or set it in a layer outside them, before call_next."
            )
        lost = [layer.name for layer in culprits if not layer.reaches_endpoint]
        if lost:
            text.append(f"Values set in {', '.join(lost)} do not reach the endpoint: it runs the app in another context.")
        rest = [layer.name for layer in culprits if layer.name not in cut and layer.name not in lost]
        if rest:
            text.append(f"{', '.join(rest)} hides the endpoint's values: it runs the inner app in another context.")
        return " ".join(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "app": self.app,
            "layers": [asdict(layer) for layer in self.layers],
            "verdict": {"ok": not self.culprits, "culprits": self.culprits, "fix": self.fix},
            "findings": [asdict(finding) for finding in self.findings],
        }


# -- loading the user's app -----------------------------------------------------------
def load_app(target: str, factory: bool, app_dir: Path) -> tuple[Any, Path]:
    """The app object and the file it lives in."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise DiagnoseError(f"expected MODULE:ATTR such as 'myapp.main:app', got {target!r}")
    if not app_dir.is_dir():
        raise DiagnoseError(f"--app-dir {app_dir} is not a directory")
    if str(app_dir.resolve()) not in sys.path:
        sys.path.insert(0, str(app_dir.resolve()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise DiagnoseError(f"cannot import {module_name!r}: {exc} (searched {app_dir.resolve()} and sys.path)") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise DiagnoseError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attribute):
        public = [name for name in vars(module) if not name.startswith("_")]
        hint = suggest(attribute, public, otherwise="")
        raise DiagnoseError(f"module {module_name!r} has no attribute {attribute!r}{hint}")
    app = getattr(module, attribute)
    if factory:
        if not callable(app):
            raise DiagnoseError(f"{target} is not callable, so it cannot be a --factory")
        try:
            app = app()
        except Exception as exc:  # noqa: BLE001
            raise DiagnoseError(f"calling the factory {target} failed: {type(exc).__name__}: {exc}") from None
    if not (hasattr(app, "user_middleware") and hasattr(app, "build_middleware_stack")):
        what = "an ASGI callable" if callable(app) else f"a {type(app).__name__}"
        raise DiagnoseError(
            f"{target} is {what}, not a Starlette or FastAPI application"
            + ("; pass --factory if it builds one" if callable(app) and not factory else "")
        )
    return app, Path(module.__file__ or app_dir)


def describe_layer(middleware) -> Layer:
    from starlette.middleware.base import BaseHTTPMiddleware

    options = getattr(middleware, "kwargs", None) or getattr(middleware, "options", {})
    cls = middleware.cls
    dispatch = options.get("dispatch")
    if dispatch is not None and isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware):
        return Layer(getattr(dispatch, "__name__", repr(dispatch)), "http_decorator")
    kind = "base_http" if isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware) else "asgi"
    return Layer(getattr(cls, "__name__", repr(cls)), kind)


# -- the probe run ------------------------------------------------------------------------------
def probed_stack(app, layers: int, path: str | None, seen: dict):
    """Starlette's own stack for `app`, with probe layers interleaved.

    The app's middleware list is swapped only while the stack is built."""
    from starlette.middleware import Middleware

    up = contextvars.ContextVar("ctxlab.up")
    down = [contextvars.ContextVar(f"ctxlab.down.{i}") for i in range(layers)]

    class ProbeLayer:
        def __init__(self, app, index: int) -> None:
            self.app, self.index = app, index

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            if self.index == layers:  # innermost: stands in for the endpoint
                seen["down"] = [var.get(None) is not None for var in down]
                if scope["path"] == PROBE_PATH and path is None:
                    up.set("endpoint")
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                    await send({"type": "http.response.body", "body": b"ctxlab"})
                    return
                await self.app(scope, receive, send)
                up.set("endpoint")
                return
            down[self.index].set(True)
            await self.app(scope, receive, send)
            seen.setdefault("up", {})[self.index] = up.get(None) is not None

    original = app.user_middleware
    interleaved = []
    for index, middleware in enumerate(original):
        interleaved += [Middleware(ProbeLayer, index=index), middleware]
    interleaved.append(Middleware(ProbeLayer, index=layers))
    app.user_middleware = interleaved
    try:
        return app.build_middleware_stack()
    finally:
        app.user_middleware = original


async def _send_one(stack, method: str, path: str, lifespan: bool) -> int:
    import httpx

    from ctxlab.servers import lifespan as run_lifespan

    async def request() -> int:
        # The user's route may fail (that can be the very pitfall): the
        # probe layers have recorded what they saw by then.
        transport = httpx.ASGITransport(app=stack, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ctxlab") as client:
            return (await client.request(method, path)).status_code

    loop = asyncio.get_running_loop()
    if lifespan:
        async with run_lifespan(stack):
            return await contextvars.Context().run(loop.create_task, request())
    return await contextvars.Context().run(loop.create_task, request())


def diagnose(target: str, *, factory=False, app_dir=Path("."), path=None, method="GET", lifespan=False) -> Diagnosis:
    app, source = load_app(target, factory, app_dir)
    diagnosis = Diagnosis(target, [describe_layer(m) for m in app.user_middleware])
    seen: dict[str, Any] = {}
    stack = probed_stack(app, len(diagnosis.layers), path, seen)
    try:
        diagnosis.status = asyncio.run(_send_one(stack, method, path or PROBE_PATH, lifespan))
    except Exception as exc:  # noqa: BLE001 - the user's app raised
        raise DiagnoseError(f"the probe request failed: {type(exc).__name__}: {exc}") from None
    if "down" not in seen:
        raise DiagnoseError(f"the request never reached the app's router (status {diagnosis.status})")
    for index, layer in enumerate(diagnosis.layers):
        layer.sees_endpoint_values = seen.get("up", {}).get(index, False)
        layer.reaches_endpoint = seen["down"][index]
    root = app_dir.resolve() if source.parent.resolve().is_relative_to(app_dir.resolve()) else source.parent
    diagnosis.findings = scan(root)
    return diagnosis


# -- static findings --------------------------------------------------------------------------------
ROUTE_DECORATORS = {"get", "post", "put", "patch", "delete", "options", "head", "api_route", "route", "websocket"}


def _contextvar_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            func = node.value.func
            if getattr(func, "id", None) == "ContextVar" or getattr(func, "attr", None) == "ContextVar":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _calls(function: ast.AST, method: str, on: set[str]) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in on
    ]


def _depended_on(tree: ast.AST) -> set[str]:
    return {
        node.args[0].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Depends"
        and node.args
        and isinstance(node.args[0], ast.Name)
    }


def _is_route(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(func, ast.Attribute) and func.attr in ROUTE_DECORATORS:
            return True
    return False


def scan(root: Path) -> list[Finding]:
    """Read the app's own modules (not its virtualenv) for known pitfalls."""
    files = [p for p in sorted(root.rglob("*.py")) if not ({".venv", "venv", "site-packages", "node_modules"} & set(p.parts))]
    trees = {}
    for path in files:
        try:
            trees[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
    contextvars_ = set().union(*map(_contextvar_names, trees.values())) if trees else set()
    depended = set().union(*map(_depended_on, trees.values())) if trees else set()
    findings = []
    for path, tree in trees.items():
        where = str(path.relative_to(root))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):  # `def`, not `async def`
                role = "endpoint" if _is_route(node) else "dependency" if node.name in depended else None
                is_generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(node))
                if role:
                    for call in _calls(node, "set", contextvars_):
                        findings.append(Finding(where, call.lineno, "sync-set",
                            f"`def` {role} {node.name}() sets {call.func.value.id}: it runs in a thread-pool "
                            "copy of the context, so the value is lost when it returns; make it `async def`."))  # fmt: skip
                if role == "dependency" and is_generator:
                    for call in _calls(node, "reset", contextvars_):
                        findings.append(Finding(where, call.lineno, "sync-yield-reset",
                            f"`def` yield dependency {node.name}() resets {call.func.value.id}: FastAPI enters and "
                            "exits it in two different thread-pool copies, so reset raises ValueError; make it "
                            "`async def`."))  # fmt: skip
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "run_in_executor":
                if "copy_context" not in ast.unparse(node) and not _runs_in_context(node):
                    findings.append(Finding(where, node.lineno, "executor-no-copy",
                        "run_in_executor without copy_context(): the job runs in the worker thread's own "
                        "context and sees none of the caller's ContextVars; submit copy_context().run."))  # fmt: skip
    return sorted(findings, key=lambda f: (f.file, f.line))


def _runs_in_context(call: ast.Call) -> bool:
    """`run_in_executor(pool, ctx.run, job)`: a context's run method."""
    return len(call.args) > 1 and isinstance(call.args[1], ast.Attribute) and call.args[1].attr == "run"
