"""`ctxlab probe` on apps written as users write them: the report must
match what the apps' own middleware really saw."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ctxlab, ctxlab_json

from ctxlab.diagnose import diagnose
from ctxlab.target import TargetError

APPS = Path(__file__).parent / "fixtures" / "user_apps"
sys.path.insert(0, str(APPS))
import mixes  # noqa: E402

KIND = {"base": "base_http", "pure": "asgi", "isolating": "asgi", "http": "http_decorator"}


def findings_of(tmp_path, name, *lines):
    """The module of these lines, in `tmp_path`, and the findings on its
    `app`: (file, line, kind)."""
    module = f"{name}_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text("".join(f"{line}\n" for line in lines))
    return module, [(f.file, f.line, f.kind) for f in diagnose(f"{module}:app", app_dir=tmp_path).findings]


@pytest.mark.parametrize("attr", sorted(mixes.MIXES))
def test_each_layer_matches_what_really_happened(attr):
    mixes.SEEN.clear(), mixes.REACHED.clear(), mixes.OWN.clear()
    diagnosis = diagnose(f"mixes:{attr}", app_dir=APPS, path="/real")
    assert diagnosis.status == 200
    _, layers = mixes.MIXES[attr]
    assert [(layer.name, layer.kind) for layer in diagnosis.layers] == [(name, KIND[kind]) for kind, name in layers]
    for layer in diagnosis.layers:
        assert layer.sees_endpoint_values == mixes.SEEN[layer.name], layer
        assert layer.reaches_endpoint == mixes.REACHED[layer.name], layer


@pytest.mark.parametrize("attr", sorted(mixes.MIXES))
def test_the_probe_route_agrees_with_the_real_route(attr):
    by_probe_route = diagnose(f"mixes:{attr}", app_dir=APPS).to_json()
    through_real = diagnose(f"mixes:{attr}", app_dir=APPS, path="/real").to_json()
    assert by_probe_route["layers"] == through_real["layers"]


@pytest.mark.parametrize(
    "attr, culprits",
    [
        ("starlette_pure_base_http", ["Bad", "logged"]),
        ("starlette_base_pure", ["Bad"]),
        ("fastapi_http_pure_base_pure", ["tag", "Audit"]),
        ("fastapi_all_pure", []),
        ("starlette_isolating", ["Fresh"]),  # Outer only suffers from Fresh
        ("starlette_bare", []),
    ],
)
def test_verdict_names_the_right_layers(attr, culprits):
    verdict = diagnose(f"mixes:{attr}", app_dir=APPS).to_json()["verdict"]
    assert verdict["culprits"] == culprits and verdict["ok"] == (not culprits)


def test_cli_json_matches_the_contract():
    code, document, _ = ctxlab_json("probe", "mixes:starlette_base_pure", "--app-dir", str(APPS))
    assert code == 1
    assert list(document) == ["schema_version", "app", "layers", "verdict", "findings"]
    assert document["schema_version"] == 1  # DESIGN.md's contract
    assert document["layers"][0] == {
        "name": "Bad",
        "kind": "base_http",
        "sees_endpoint_values": False,
        "reaches_endpoint": True,
    }
    assert document["verdict"]["culprits"] == ["Bad"] and "pure ASGI" in document["verdict"]["fix"]


def test_factory_and_table_output():
    code, out, _ = ctxlab("probe", "mixes:create_app", "--factory", "--app-dir", str(APPS))
    assert code == 1 and "Made" in out and "base_http" in out and "cut by: Made" in out
    code, out, _ = ctxlab("probe", "mixes:fastapi_all_pure", "--app-dir", str(APPS))
    assert code == 0 and "ok: values travel through every layer" in out and "not observed:" not in out


@pytest.mark.parametrize(
    "target, extra, message",
    [
        ("nosuchmodule:app", [], "cannot import 'nosuchmodule'"),
        ("mixes:ap", [], "has no attribute 'ap'"),
        ("mixes:config", [], "mixes:config is a dict, not an ASGI application"),
        ("mixes:raw_asgi", [], "is an ASGI callable with no Starlette or FastAPI application inside"),
        ("mixes", [], "expected MODULE:ATTR"),
        ("mixes:config", ["--factory"], "is not callable"),
        ("mixes:starlette_bare", ["--path", "nope"], "--path must start with '/'"),
    ],
)
def test_bad_targets_exit_2_with_one_line(target, extra, message):
    code, out, err = ctxlab("probe", target, "--app-dir", str(APPS), *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_static_findings_point_at_file_and_line(tmp_path):
    app = tmp_path / "svc.py"
    app.write_text(
        "import asyncio\n"
        "from contextvars import ContextVar, copy_context\n"
        "from fastapi import Depends, FastAPI\n"
        "tenant = ContextVar('tenant')\n"
        "def dep():\n"
        "    tenant.set('x')\n"
        "def gen():\n"
        "    token = tenant.set('y')\n"
        "    yield\n"
        "    tenant.reset(token)\n"
        "async def fine():\n"
        "    tenant.set('z')\n"
        "app = FastAPI()\n"
        "@app.get('/', dependencies=[Depends(dep), Depends(gen), Depends(fine)])\n"
        "async def home():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    await loop.run_in_executor(None, print)\n"
        "    await loop.run_in_executor(None, copy_context().run, print)\n"
        "    context = copy_context()\n"
        "    await loop.run_in_executor(None, context.run, print)\n"
    )
    code, document, _ = ctxlab_json("probe", "svc:app", "--app-dir", str(tmp_path))
    found = [(f["file"], f["line"], f["kind"]) for f in document["findings"]]
    assert found == [
        ("svc.py", 6, "sync-set"),
        ("svc.py", 8, "sync-set"),
        ("svc.py", 10, "sync-yield-reset"),
        ("svc.py", 17, "executor-no-copy"),
    ]
    # As a person reads them: file:line [kind] and the message, one a line, last.
    code, out, _ = ctxlab("probe", "svc:app", "--app-dir", str(tmp_path))
    shown = [line for line in out.splitlines() if line.startswith("svc.py:")]
    assert shown == [
        f"{file}:{line} [{kind}] {f['message']}" for (file, line, kind), f in zip(found, document["findings"])
    ]
    assert out.splitlines()[-len(found) :] == shown


def test_a_path_no_route_takes_is_one_line_and_exit_2():
    code, _, err = ctxlab("probe", "mixes:starlette_bare", "--app-dir", str(APPS), "--path", "/missing")
    assert code == 2 and "GET /missing answered 404: no route of the app took it" in err and "Traceback" not in err


REAL_APPS = Path(__file__).parent / "fixtures" / "real_apps"


class TestRequestsTheAppAccepts:
    """A layer that answers the probe itself is named, with what to pass."""

    def test_a_rejecting_layer_is_named_with_its_status_and_the_option(self):
        code, out, err = ctxlab(
            "probe", "lifespan_apikey:app", "--app-dir", str(REAL_APPS), "--path", "/items", "--lifespan", "--json"
        )
        document = json.loads(out)
        assert code == 2 and "Traceback" not in err
        assert "ApiKeyMiddleware answered GET /items with 401; pass the credentials it expects with --header" in err
        assert all(layer["sees_endpoint_values"] is None and "note" in layer for layer in document["layers"])
        assert document["verdict"]["culprits"] == []

    def test_without_lifespan_the_failure_is_the_apps_and_nobody_is_blamed(self):
        code, out, err = ctxlab(
            "probe", "lifespan_apikey:app", "--app-dir", str(REAL_APPS), "--path", "/items",
            "--header", "X-API-Key: secret", "--json",
        )  # fmt: skip
        document = json.loads(out)
        assert code == 2 and "GET /items raised AttributeError in DatabaseSessionMiddleware, before the endpoint" in err
        assert document["verdict"]["culprits"] == []
        assert {layer["sees_endpoint_values"] for layer in document["layers"]} == {None}


def test_without_path_each_mount_is_probed_through_its_own_leaf():
    """Layers of every mount are listed with their mount, and observed by a
    probe request through that mount (truth: truth.py on the real routes)."""
    code, document, _ = ctxlab_json("probe", "mounted_subapps:app", "--app-dir", str(REAL_APPS))
    rows = [
        [layer["name"], layer.get("mount"), layer["sees_endpoint_values"], layer["reaches_endpoint"]]
        for layer in document["layers"]
    ]
    truth = {}
    for module in ("mounted_subapps", "mounted_admin"):
        done = subprocess.run(
            [sys.executable, str(REAL_APPS / "truth.py"), str(REAL_APPS), module, "asgi"],
            capture_output=True,
            text=True,
        )
        truth.update({(r[0], r[2]): [r[0], r[2], r[3], r[4]] for r in json.loads(done.stdout)["layers"] if r[2]})
    assert [row[:2] for row in rows] == [["CorrelationIdMiddleware", None]] + [key for key in [list(k) for k in truth]]
    assert rows[1:] == list(truth.values())
    assert code == 1 and document["verdict"]["culprits"] == ["AuditMiddleware", "IsolatingMiddleware"]
    # The table: an onion per mount, each layer's mount in its row.
    code, out, _ = ctxlab("probe", "mounted_subapps:app", "--app-dir", str(REAL_APPS))
    lines = out.splitlines()
    onions = dict(line.split(" onion: ") for line in lines if " onion: " in line)
    assert code == 1 and list(onions) == list(dict.fromkeys(mount for _, mount in truth)), out
    for mount, onion in onions.items():  # a mount's onion: the app's own layers, then the mount's, only
        inside = [name for name, layer_mount in truth if layer_mount == mount]
        assert [part.split(" [")[0] for part in onion.split(" → ")] == ["CorrelationIdMiddleware", *inside, "app"]
    # The app's own onion (a request that enters no mount) holds only its own layers.
    assert [line for line in lines if line.startswith("onion: ")] == ["onion: CorrelationIdMiddleware [asgi] → app"]
    for name, mount in truth:
        (row,) = [line.split() for line in lines if line.split()[:2] in ([name, "asgi"], [name, "base_http"])]
        assert row[2] == mount, row


class TestWhatTheAppDoesCannotSpoilTheOutput:
    """Prints, sys.exit, threads and endless background tasks of the app."""

    def write(self, tmp_path, body):
        (tmp_path / "noisy.py").write_text(
            "from starlette.applications import Starlette\n"
            "from starlette.responses import PlainTextResponse\n"
            "from starlette.routing import Route\n" + body
        )

    def test_prints_and_logs_go_to_stderr(self, tmp_path):
        self.write(tmp_path,
            "import logging, sys\n"
            "print('hello at import')\n"
            "logging.basicConfig(stream=sys.stdout, level=logging.INFO)\n"
            "async def home(request):\n"
            "    print('hello from the endpoint'); logging.info('logged')\n"
            "    return PlainTextResponse('ok')\n"
            "app = Starlette(routes=[Route('/', home)])\n")  # fmt: skip
        code, out, err = ctxlab("probe", "noisy:app", "--app-dir", str(tmp_path), "--path", "/", "--json")
        assert code == 0 and json.loads(out)["verdict"]["ok"] is True
        assert "hello at import" in err and "hello from the endpoint" in err and "logged" in err

    def test_sys_exit_at_import_is_one_line(self, tmp_path):
        self.write(tmp_path, "import sys\nsys.exit(3)\n")
        code, out, err = ctxlab("probe", "noisy:app", "--app-dir", str(tmp_path))
        assert code == 2 and out == "" and err.strip() == "ctxlab: error: importing 'noisy' called sys.exit(3)"

    def test_a_middleware_that_fails_as_it_is_built_is_one_line(self, tmp_path):
        """Starlette builds the stack on the first request, outside its error
        handling: the app cannot answer any request, and the user is told why."""
        self.write(tmp_path,
            "from starlette.middleware import Middleware\n"
            "class NeedsSettings:\n"
            "    def __init__(self, app):\n"
            "        raise KeyError('SETTINGS_URL')\n"
            "app = Starlette(middleware=[Middleware(NeedsSettings)])\n")  # fmt: skip
        code, out, err = ctxlab("probe", "noisy:app", "--app-dir", str(tmp_path))
        assert (code, out) == (2, "")
        assert err == "ctxlab: error: building the middleware of the app failed: KeyError: 'SETTINGS_URL'\n"

    def test_a_thread_or_an_endless_background_task_does_not_keep_ctxlab(self, tmp_path):
        self.write(tmp_path,
            "import asyncio, threading, time\n"
            "from starlette.background import BackgroundTask\n"
            "threading.Thread(target=time.sleep, args=(3600,)).start()\n"
            "async def forever():\n"
            "    await asyncio.sleep(3600)\n"
            "async def home(request):\n"
            "    return PlainTextResponse('ok', background=BackgroundTask(forever))\n"
            "app = Starlette(routes=[Route('/', home)])\n")  # fmt: skip
        code, out, err = ctxlab("probe", "noisy:app", "--app-dir", str(tmp_path), "--path", "/", "--json")
        assert json.loads(out)["verdict"]["ok"] is True
        assert code == 0 and "still running 5 s after its response" in err and "Traceback" not in err


def test_a_mounted_static_directory_is_not_probed(tmp_path):
    """StaticFiles has no route for the probe: only Starlette apps and
    routers get a probe request of their own."""
    (tmp_path / "static").mkdir()
    (tmp_path / "pages.py").write_text(
        "from fastapi import FastAPI\n"
        "from starlette.staticfiles import StaticFiles\n"
        "app = FastAPI()\n"
        f"app.mount('/static', StaticFiles(directory={str(tmp_path / 'static')!r}))\n"
    )
    code, document, err = ctxlab_json("probe", "pages:app", "--app-dir", str(tmp_path))
    assert code == 0 and document["verdict"]["ok"] is True and err == ""


def test_a_teardown_that_raises_after_the_response_is_reported_as_such():
    code, document, err = ctxlab_json("probe", "teardown_raises:app", "--app-dir", str(REAL_APPS), "--path", "/report")
    assert code == 2 and document["verdict"]["culprits"] == []
    assert "GET /report raised ValueError after the response was sent" in err
    assert {layer["note"] for layer in document["layers"]} == {
        "GET /report raised ValueError after the response was sent; not observed"
    }
    code, out, _ = ctxlab("probe", "teardown_raises:app", "--app-dir", str(REAL_APPS), "--path", "/report")
    assert code == 2 and "not observed: some layers could not be observed" in out and "ok: values" not in out
    assert "GET /report raised ValueError after the response" in out  # each layer's note, in its row


class TestOptionsShapeTheRequest:
    """--method, --data, --header and --host reach the app as given."""

    def write(self, tmp_path):
        (tmp_path / "orders.py").write_text(
            "from fastapi import FastAPI\n"
            "from pydantic import BaseModel\n"
            "from starlette.middleware.trustedhost import TrustedHostMiddleware\n"
            "class Order(BaseModel):\n"
            "    item: str\n"
            "app = FastAPI()\n"
            "app.add_middleware(TrustedHostMiddleware, allowed_hosts=['api.example.com'])\n"
            "@app.post('/orders')\n"
            "async def create(order: Order):\n"
            "    return {'item': order.item}\n"
        )

    def test_a_body_the_route_accepts(self, tmp_path):
        self.write(tmp_path)
        code, document, err = ctxlab_json(
            "probe", "orders:app", "--app-dir", str(tmp_path), "--path", "/orders", "--method", "post",
            "--data", '{"item": "tea"}', "--header", "Content-Type: application/json",
        )  # fmt: skip
        assert code == 0 and err == ""
        assert document["layers"] == [
            {"name": "TrustedHostMiddleware", "kind": "asgi", "sees_endpoint_values": True, "reaches_endpoint": True}
        ]

    def test_a_host_the_app_refuses_is_named_with_the_option(self, tmp_path):
        self.write(tmp_path)
        code, _, err = ctxlab_json(
            "probe", "orders:app", "--app-dir", str(tmp_path), "--path", "/orders", "--method", "POST",
            "--host", "evil.example.org",
        )  # fmt: skip
        assert code == 2
        assert "TrustedHostMiddleware answered POST /orders with 400; pass --host with a host it allows" in err

    @pytest.mark.parametrize("server", ["asgi", "uvicorn"])
    def test_headers_reach_the_app_as_given_on_either_server(self, tmp_path, server):
        """Two headers of one name and a Latin-1 value arrive as sent, in
        process and over a real uvicorn (where a dict kept one of the two,
        and httpx's ASCII failed on the é)."""
        seen = tmp_path / "seen.json"
        (tmp_path / "echo.py").write_text(
            "import json, os\n"
            "from starlette.applications import Starlette\n"
            "from starlette.responses import PlainTextResponse\n"
            "from starlette.routing import Route\n"
            "async def endpoint(request):\n"
            "    seen = {name: request.headers.getlist(name) for name in ('x-tag', 'host')}\n"
            "    with open(os.environ['SEEN'], 'w') as f:\n"
            "        json.dump(seen, f)\n"
            "    return PlainTextResponse('ok')\n"
            "app = Starlette(routes=[Route('/', endpoint)])\n"
        )
        code, _, err = ctxlab(
            "probe", "echo:app", "--app-dir", str(tmp_path), "--path", "/", "--server", server, "--header", "X-Tag: caf\u00e9",
            "--header", "X-Tag: b", "--host", "h\u00f4te.example", env={"SEEN": str(seen)},
        )  # fmt: skip
        assert code in (0, 2), err
        assert json.loads(seen.read_text()) == {"x-tag": ["caf\u00e9", "b"], "host": ["h\u00f4te.example"]}

    @pytest.mark.parametrize(
        "args, message",
        [
            (["--host", "\udcff"], "--host is a header value, Latin-1 text (HTTP's octets), got '\\udcff'"),
            (["--header", "X-A: \u20ac"], "--header values are Latin-1 text (HTTP's octets), got 'X-A: \u20ac'"),
            (["--data", "\udcff"], "--data must be UTF-8 text, got '\\udcff'"),
            (["--path", "/\udcff"], "--path must be UTF-8 text, got '/\\udcff'"),
        ],
    )
    def test_text_a_request_cannot_carry_is_a_usage_error(self, tmp_path, args, message):
        self.write(tmp_path)
        code, out, err = ctxlab("probe", "orders:app", "--app-dir", str(tmp_path), *args)
        assert (code, out, err) == (2, "", f"ctxlab: error: {message}\n")

    def test_a_header_without_a_colon_is_a_usage_error(self, tmp_path):
        self.write(tmp_path)
        code, out, err = ctxlab("probe", "orders:app", "--app-dir", str(tmp_path), "--header", "oops")
        assert (
            code == 2
            and out == ""
            and err.strip() == ("ctxlab: error: --header expects K:V such as 'Authorization: Bearer x', got 'oops'")
        )


def test_static_findings_skip_virtualenvs_and_vendored_code(tmp_path):
    """Only the app's own code is read: a pitfall inside its virtualenv or
    node_modules belongs to someone else, though the app imports it."""
    pitfall = "import asyncio\nasync def f():\n    await asyncio.get_running_loop().run_in_executor(None, print)\n"
    vendored = {".venv/lib": "in_venv", "venv/lib": "in_virtualenv", "python/site-packages": "in_site_packages",
                "node_modules/x": "in_node_modules", "tests": "in_tests"}  # fmt: skip
    imports = "import sys\nfrom pathlib import Path\n"
    for folder, module in vendored.items():
        (tmp_path / folder).mkdir(parents=True)
        # Each module leaves a file when imported: proof that the app loaded it.
        (tmp_path / folder / f"{module}.py").write_text(
            f"from pathlib import Path\nPath(__file__).with_suffix('.imported').touch()\n{pitfall}"
        )
        imports += f"sys.path.insert(0, str(Path(__file__).parent / {folder!r}))\nimport {module}\n"
    (tmp_path / "svc.py").write_text(imports + "from fastapi import FastAPI\napp = FastAPI()\n" + pitfall)
    code, document, _ = ctxlab_json("probe", "svc:app", "--app-dir", str(tmp_path))
    assert sorted(path.stem for path in tmp_path.glob("**/*.imported")) == sorted(vendored.values())
    line = len(imports.splitlines()) + 5
    assert [(f["file"], f["line"], f["kind"]) for f in document["findings"]] == [("svc.py", line, "executor-no-copy")]


LAYERED = """
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route


class Outer:  # pure ASGI, passes everything through
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


class Guard:  # answers every request itself
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            return await PlainTextResponse("no", status_code=STATUS)(scope, receive, send)
        await self.app(scope, receive, send)


class Broken:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raise RuntimeError("broken")
        await self.app(scope, receive, send)


class Statuses:  # records the status of every answer passing out through it
    seen = []

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                self.seen.append(message["status"])
            await send(message)

        await self.app(scope, receive, sending)


async def lifespan(app):
    Path(__file__).with_suffix(".started").touch()
    yield


guarded = Starlette(middleware=[Middleware(Outer), Middleware(Guard)])
mounted_broken = Starlette(
    middleware=[Middleware(Outer)], routes=[Mount("/sub", app=Starlette(middleware=[Middleware(Broken)]))]
)
with_lifespan = Starlette(lifespan=__import__("contextlib").asynccontextmanager(lifespan))
recorded = Starlette(middleware=[Middleware(Statuses)])
async def fails(request):
    raise RuntimeError("the endpoint failed")


failing_endpoint = Starlette(middleware=[Middleware(Outer)], routes=[Route("/fails", fails)])
recorded_with_a_broken_mount = Starlette(
    middleware=[Middleware(Statuses)], routes=[Mount("/sub", app=Starlette(middleware=[Middleware(Broken)]))]
)
from starlette.middleware.trustedhost import TrustedHostMiddleware  # noqa: E402
class FailsUnderSub:  # passes the root's requests, raises for the mount's
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/sub"):
            raise RuntimeError("not here")
        await self.app(scope, receive, send)


class HalfAnswer:  # passes the endpoint's response start on, then fails before its body
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def sending(message):
            await send(message)
            if message["type"] == "http.response.start":
                raise RuntimeError("half")

        await self.app(scope, receive, sending)


half_answer = Starlette(middleware=[Middleware(HalfAnswer)])
fails_under_mount = Starlette(middleware=[Middleware(FailsUnderSub)], routes=[Mount("/sub", app=Starlette())])
class Hosts:  # records the Host header of every request passing in through it
    seen = []

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen.append(dict(scope["headers"])[b"host"].decode())
        await self.app(scope, receive, send)


wildcard_host = Starlette(
    middleware=[Middleware(Hosts), Middleware(TrustedHostMiddleware, allowed_hosts=["*.example.org"])]
)
trusted_mount = Starlette(
    routes=[
        Mount(
            "/api",
            app=Starlette(),
            middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=["api.example.com"])],
        )
    ]
)


class NeedsSettings:  # fails when its app builds the stack, as a middleware missing its settings does
    def __init__(self, app):
        raise RuntimeError("SETTINGS_URL is not set")


# The root's stack builds, the mount's fails: the splicing stops midway.
refused_under_mount = Starlette(
    middleware=[Middleware(Outer)], routes=[Mount("/sub", app=Starlette(middleware=[Middleware(NeedsSettings)]))]
)
inner_wrapper = Outer(refused_under_mount)
outer_wrapper = Outer(inner_wrapper)
"""


def layered(tmp_path, status=418):
    """A module of small apps, named for the test (in-process loads must not share it)."""
    module = f"layered_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(LAYERED.replace("STATUS", str(status)))
    return module


@pytest.mark.parametrize(
    "status, hint",
    [
        (400, "pass --host with a host it allows"),
        (401, "pass the credentials it expects with --header 'Authorization: ...'"),
        (403, "pass the credentials it expects with --header 'Authorization: ...'"),
        (429, "it limits the rate: raise its limit for the probe or try again later"),
        (405, "pass --method, --header 'Content-Type: ...' or --data as the route expects"),
        (415, "pass --method, --header 'Content-Type: ...' or --data as the route expects"),
        (422, "pass --method, --header 'Content-Type: ...' or --data as the route expects"),
        (418, "pass --path, --method, --header or --data so that it lets the request through"),
    ],
)
def test_the_innermost_layer_that_answered_is_named_with_what_to_pass(tmp_path, status, hint):
    module = layered(tmp_path, status)
    diagnosis = diagnose(f"{module}:guarded", app_dir=tmp_path)
    assert diagnosis.status == status  # what Guard answered
    assert diagnosis.notes == [f"Guard answered GET /__ctxlab_probe__ with {status}; {hint}"]


def test_a_layer_observed_by_one_request_keeps_no_note_from_a_later_failure(tmp_path):
    """The root's probe request passes Outer; the mount's raises in Broken."""
    module = layered(tmp_path)
    layers = {layer.name: layer for layer in diagnose(f"{module}:mounted_broken", app_dir=tmp_path).layers}
    assert (layers["Outer"].sees_endpoint_values, layers["Outer"].note) == (True, None)
    assert layers["Broken"].sees_endpoint_values is None
    assert (
        layers["Broken"].note
        == "GET /sub/__ctxlab_probe__ raised RuntimeError in Broken, before the endpoint; not observed"
    )


def test_the_lifespan_runs_only_when_asked(tmp_path):
    module = layered(tmp_path)
    started = tmp_path / f"{module}.started"  # the app's own trace of its startup
    diagnose(f"{module}:with_lifespan", app_dir=tmp_path)
    assert not started.exists()
    diagnose(f"{module}:with_lifespan", app_dir=tmp_path, lifespan=True)
    assert started.exists()


def test_a_plain_def_dependency_that_sets_then_resets_is_one_finding(tmp_path):
    """Set and reset in one call run in the same thread-pool copy: the reset
    works (only the value is lost); a yield dependency would reset in another."""
    module, findings = findings_of(
        tmp_path,
        "plain_dep",
        "from contextvars import ContextVar",
        "from fastapi import Depends, FastAPI",
        "tenant = ContextVar('tenant')",
        "def plain():",
        "    token = tenant.set('x')",
        "    tenant.reset(token)",
        "app = FastAPI()",
        "@app.get('/', dependencies=[Depends(plain)])",
        "async def home():",
        "    return {}",
    )
    assert findings == [(f"{module}.py", 5, "sync-set")]


def test_the_probe_route_answers_as_a_plain_successful_route(tmp_path):
    """Layers that act on the status (only on success, say) see the 200 a
    plain endpoint would send."""
    module = layered(tmp_path)
    diagnose(f"{module}:recorded", app_dir=tmp_path)
    assert sys.modules[module].Statuses.seen == [200]


def test_the_status_is_the_first_probe_requests_the_roots(tmp_path):
    """Without --path the root is probed first, then each mount: the
    diagnosis' status is what the root answered (the app's own record),
    not what the mount's failing request got."""
    module = layered(tmp_path)
    diagnosis = diagnose(f"{module}:recorded_with_a_broken_mount", app_dir=tmp_path)
    # The root's probe, then the mount's error page (its own ServerErrorMiddleware answers 500).
    assert sys.modules[module].Statuses.seen == [200, 500]
    assert diagnosis.status == 200 and not diagnosis.reached_endpoints


def test_an_endpoint_that_raises_before_answering_is_not_said_to_have_answered(tmp_path):
    """The endpoint raises before sending anything: the note says it
    raised, not that it raised after its response."""
    module = layered(tmp_path)
    diagnosis = diagnose(f"{module}:failing_endpoint", app_dir=tmp_path, path="/fails")
    assert diagnosis.notes == ["GET /fails raised RuntimeError: the endpoint failed"]


def test_a_set_on_something_else_does_not_hide_the_contextvar_after_it(tmp_path):
    """A `def` dependency sets a threading.Event (also `.set()`), then a
    ContextVar: the ContextVar's set is still found."""
    module, findings = findings_of(
        tmp_path,
        "event_dep",
        "import threading",
        "from contextvars import ContextVar",
        "from fastapi import Depends, FastAPI",
        "ready = threading.Event()",
        "tenant = ContextVar('tenant')",
        "def dep():",
        "    ready.set()",
        "    tenant.set('x')",
        "app = FastAPI()",
        "@app.get('/', dependencies=[Depends(dep)])",
        "async def home():",
        "    return {}",
    )
    assert findings == [(f"{module}.py", 8, "sync-set")]


def test_a_router_mounted_inside_middleware_wrapped_by_hand_is_scanned(tmp_path):
    """A bare Router (no Starlette app around it) mounted inside middleware
    wrapped around it by hand: its `def` endpoint, which sets a ContextVar
    in the thread pool's copy, is found like any other."""
    module, findings = findings_of(
        tmp_path,
        "wrapped_router",
        "from contextvars import ContextVar",
        "from starlette.applications import Starlette",
        "from starlette.middleware.gzip import GZipMiddleware",
        "from starlette.routing import Mount, Route, Router",
        "tenant = ContextVar('tenant')",
        "def legacy(request):",
        "    tenant.set('acme')",
        "api = Router(routes=[Route('/legacy', legacy)])",
        "app = Starlette(routes=[Mount('/api', app=GZipMiddleware(api))])",
    )
    assert findings == [(f"{module}.py", 7, "sync-set")]


def test_a_starred_call_to_run_in_executor_is_read_without_crashing(tmp_path):
    module, findings = findings_of(
        tmp_path,
        "starred",
        "import asyncio",
        "from starlette.applications import Starlette",
        "async def job(*args):",
        "    await asyncio.get_running_loop().run_in_executor(*args)",
        "app = Starlette()",
    )
    assert findings == [(f"{module}.py", 4, "executor-no-copy")]  # what it runs is unknown: not a copy


def test_findings_in_a_package_are_named_from_its_parent_and_through_attributes(tmp_path):
    """`pkg.main:app`: files are named as the user sees them (pkg/main.py),
    and a ContextVar reached through another module (`state.tenant.set`) is
    found."""
    package = tmp_path / f"pkg_{tmp_path.name}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "state.py").write_text("from contextvars import ContextVar\ntenant = ContextVar('tenant')\n")
    (package / "main.py").write_text(
        "from fastapi import Depends, FastAPI\n"
        "from . import state\n"
        "def dep():\n"
        "    state.tenant.set('x')\n"
        "app = FastAPI()\n"
        "@app.get('/', dependencies=[Depends(dep)])\n"
        "async def home():\n"
        "    return {}\n"
    )
    findings = diagnose(f"{package.name}.main:app", app_dir=tmp_path).findings
    assert [(f.file, f.line, f.kind) for f in findings] == [(f"{package.name}/main.py", 4, "sync-set")]


def test_the_app_is_left_as_it_was_found(tmp_path):
    """The probes spliced in for the run are taken out again: the app
    builds its own stack on its next request, without them."""
    module = layered(tmp_path)
    diagnose(f"{module}:guarded", app_dir=tmp_path)
    app = sys.modules[module].guarded
    assert app.middleware_stack is None  # Starlette builds it on the first request
    assert [m.cls.__name__ for m in app.user_middleware] == ["Outer", "Guard"]


def test_an_app_that_fails_midway_through_the_splicing_is_left_as_it_was_found(tmp_path):
    """The root app's stack is built and probed, then the mount's fails to
    build (the app's own middleware raises): the app's error is named, and
    the probes already in the app's objects are taken out."""
    module = layered(tmp_path)
    with pytest.raises(TargetError) as raised:
        diagnose(f"{module}:outer_wrapper", app_dir=tmp_path)
    assert str(raised.value) == (
        "building the middleware of the app mounted at /sub failed: RuntimeError: SETTINGS_URL is not set"
    )
    app = sys.modules[module]
    assert app.outer_wrapper.app is app.inner_wrapper  # as the module built them
    assert app.inner_wrapper.app is app.refused_under_mount
    assert app.refused_under_mount.middleware_stack is None  # Starlette builds it on the first request


def test_the_fix_says_whether_every_layer_was_observed(tmp_path):
    module = layered(tmp_path)
    guarded = diagnose(f"{module}:guarded", app_dir=tmp_path)
    assert guarded.fix.startswith("Nothing to blame among the layers observed")  # Guard answered itself
    assert diagnose("mixes:fastapi_all_pure", app_dir=APPS).fix.startswith("Nothing to fix")


def test_the_fix_names_each_kind_of_culprit_with_its_own_remedy():
    """mixes' Fresh runs the inner app in an empty context (pure ASGI), Bad
    is a BaseHTTPMiddleware: each gets the sentence for its kind, and only that."""
    isolating = diagnose("mixes:starlette_isolating", app_dir=APPS).fix
    assert isolating == "Fresh run(s) the inner app in another context: values do not cross it."
    child_task = diagnose("mixes:starlette_base_pure", app_dir=APPS).fix
    assert child_task.startswith("Bad run(s) the rest of the app in a child task (BaseHTTPMiddleware)")
    assert "another context" not in child_task


def test_an_own_module_that_is_not_utf8_does_not_hide_the_modules_after_it(tmp_path):
    """A legacy module in Latin-1 (Python reads its coding line) is imported
    before the one holding the pitfall: the pitfall is still found."""
    prefix = f"latin_{tmp_path.name}"
    (tmp_path / f"{prefix}_legacy.py").write_bytes("# -*- coding: latin-1 -*-\nGREETING = 'café'\n".encode("latin-1"))
    (tmp_path / f"{prefix}_jobs.py").write_text(
        "import asyncio\nasync def later():\n    await asyncio.get_running_loop().run_in_executor(None, print)\n"
    )
    (tmp_path / f"{prefix}.py").write_text(
        f"import {prefix}_legacy\nimport {prefix}_jobs\nfrom starlette.applications import Starlette\napp = Starlette()\n"
    )
    findings = diagnose(f"{prefix}:app", app_dir=tmp_path).findings
    assert [(f.file, f.line, f.kind) for f in findings] == [(f"{prefix}_jobs.py", 3, "executor-no-copy")]


def test_an_own_module_saved_with_a_byte_order_mark_does_not_stop_the_scan(tmp_path):
    """Python imports a UTF-8 file that starts with a byte order mark (as
    some Windows editors save it); read as plain UTF-8 its text does not
    parse.  The scan goes on: the other module's pitfall is found."""
    prefix = f"bom_{tmp_path.name}"
    pitfall = "import asyncio\nasync def later():\n    await asyncio.get_running_loop().run_in_executor(None, print)\n"
    (tmp_path / f"{prefix}_windows.py").write_bytes(b"\xef\xbb\xbf" + pitfall.encode())
    (tmp_path / f"{prefix}_jobs.py").write_text(pitfall)
    (tmp_path / f"{prefix}.py").write_text(
        f"import {prefix}_windows\nimport {prefix}_jobs\nfrom starlette.applications import Starlette\napp = Starlette()\n"
    )
    findings = diagnose(f"{prefix}:app", app_dir=tmp_path).findings
    assert (f"{prefix}_jobs.py", 3, "executor-no-copy") in [(f.file, f.line, f.kind) for f in findings]


def test_an_own_module_whose_file_is_gone_is_passed_by(tmp_path):
    """A module imported, then its file removed (code replaced under a
    running app): nothing to read there; the modules after it are read."""
    prefix = f"gone_{tmp_path.name}"
    (tmp_path / f"{prefix}_old.py").write_text("VERSION = 1\n")
    (tmp_path / f"{prefix}_jobs.py").write_text(
        "import asyncio\nasync def later():\n    await asyncio.get_running_loop().run_in_executor(None, print)\n"
    )
    (tmp_path / f"{prefix}.py").write_text(
        f"import os\nimport {prefix}_old\nos.remove({prefix}_old.__file__)\nimport {prefix}_jobs\n"
        "from starlette.applications import Starlette\napp = Starlette()\n"
    )
    findings = diagnose(f"{prefix}:app", app_dir=tmp_path).findings
    assert not (tmp_path / f"{prefix}_old.py").exists()
    assert [(f.file, f.line, f.kind) for f in findings] == [(f"{prefix}_jobs.py", 3, "executor-no-copy")]


def test_a_dependency_whose_source_python_cannot_find_is_passed_by(tmp_path):
    """A `def` dependency generated at import (compiled under the module's
    own file name, as code generators do, at a line the file does not have):
    inspect cannot show its source, so it is skipped; the rest is still read."""
    module, findings = findings_of(
        tmp_path,
        "generated",
        "from contextvars import ContextVar",
        "from fastapi import Depends, FastAPI",
        "tenant = ContextVar('tenant')",
        "generated = {}",
        "exec(compile('\\n' * 100 + 'def made():\\n    tenant.set(1)\\n', __file__, 'exec'), globals(), generated)",
        "def written():",
        "    tenant.set(2)",
        "app = FastAPI()",
        "@app.get('/', dependencies=[Depends(generated['made']), Depends(written)])",
        "async def home():",
        "    return {}",
    )
    assert findings == [(f"{module}.py", 7, "sync-set")]


def test_run_in_executor_called_with_keywords_is_read(tmp_path):
    """`run_in_executor(executor=None, func=job)`: no positional argument
    to look at, and no copy of the context either: a finding."""
    module, findings = findings_of(
        tmp_path,
        "keywords",
        "import asyncio",
        "from starlette.applications import Starlette",
        "async def job():",
        "    await asyncio.get_running_loop().run_in_executor(executor=None, func=print)",
        "app = Starlette()",
    )
    assert findings == [(f"{module}.py", 4, "executor-no-copy")]


def test_a_class_endpoint_is_no_function_to_scan(tmp_path):
    """Starlette's `HTTPEndpoint` class as a route's endpoint: its methods
    run as methods, not as a `def` endpoint in the thread pool; the scan
    passes it by, and reads the `def` endpoint beside it."""
    module, findings = findings_of(
        tmp_path,
        "class_endpoint",
        "from contextvars import ContextVar",
        "from starlette.applications import Starlette",
        "from starlette.endpoints import HTTPEndpoint",
        "from starlette.responses import PlainTextResponse",
        "from starlette.routing import Route",
        "tenant = ContextVar('tenant')",
        "class Things(HTTPEndpoint):",
        "    async def get(self, request):",
        "        return PlainTextResponse('things')",
        "def plain(request):",
        "    tenant.set('x')",
        "    return PlainTextResponse('plain')",
        "app = Starlette(routes=[Route('/things', Things), Route('/plain', plain)])",
    )
    assert findings == [(f"{module}.py", 11, "sync-set")]


def test_a_lambda_dependency_is_passed_by(tmp_path):
    """`Depends(lambda: ...)` written on a line of its own: no `def` to read
    (its source line is an assignment), and the `def` beside it is still
    read (the scan meets the lambda first: FastAPI's list read from its end)."""
    module, findings = findings_of(
        tmp_path,
        "lambda_dep",
        "from contextvars import ContextVar",
        "from fastapi import Depends, FastAPI",
        "tenant = ContextVar('tenant')",
        "settings = Depends(lambda: {'region': 'eu'})",
        "def dep():",
        "    tenant.set('x')",
        "app = FastAPI()",
        "@app.get('/', dependencies=[Depends(dep), settings])",
        "async def home():",
        "    return {}",
    )
    assert findings == [(f"{module}.py", 6, "sync-set")]


def test_a_lambda_whose_line_does_not_parse_alone_is_passed_by(tmp_path):
    """A lambda dependency on a one-line `else:` clause: its source, the
    line alone, is no Python by itself; it is passed by."""
    module = f"else_lambda_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(
        "import os\n"
        "from fastapi import Depends, FastAPI\n"
        "if os.environ.get('REGION_US'):\n"
        "    region = lambda: 'us'\n"
        "else: region = lambda: 'eu'\n"
        "app = FastAPI()\n"
        "@app.get('/', dependencies=[Depends(region)])\n"
        "async def home():\n"
        "    return {}\n"
    )
    diagnosis = diagnose(f"{module}:app", app_dir=tmp_path)
    assert (diagnosis.findings, diagnosis.complete) == ([], True)


def test_a_dependency_indented_with_a_tab_is_read(tmp_path):
    """A factory's `def` dependency, the module indented with tabs."""
    module = f"tabs_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(
        "from contextvars import ContextVar\n"
        "from fastapi import Depends, FastAPI\n"
        "def create_app():\n"
        "\ttenant = ContextVar('tenant')\n"
        "\tdef dep():\n"
        "\t\ttenant.set('x')\n"
        "\tapp = FastAPI()\n"
        "\tapp.get('/', dependencies=[Depends(dep)])(home)\n"
        "\treturn app\n"
        "async def home():\n"
        "\treturn {}\n"
    )
    findings = diagnose(f"{module}:create_app", factory=True, app_dir=tmp_path).findings
    assert [(f.line, f.kind) for f in findings] == [(6, "sync-set")]


DEPENDENCY = "from contextvars import ContextVar\ntenant = ContextVar('tenant')\ndef dep():\n    tenant.set('x')\n"
APP_USING_IT = (
    "from fastapi import Depends, FastAPI\n"
    "from {package}.deps import dep\n"
    "app = FastAPI()\n"
    "@app.get('/', dependencies=[Depends(dep)])\n"
    "async def home():\n"
    "    return {{}}\n"
)


@pytest.mark.parametrize("namespace", [False, True])
def test_the_apps_own_code_is_its_whole_top_package(tmp_path, namespace):
    """The app in pkg/web/main.py and its dependency in pkg/deps.py: the
    dependency is the app's own code, found at pkg/deps.py, whether pkg
    is a regular package or a namespace package (no __init__.py)."""
    package = f"pkg_{tmp_path.name}_{namespace}"
    (tmp_path / package / "web").mkdir(parents=True)
    if not namespace:
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "web" / "__init__.py").write_text("")
    (tmp_path / package / "deps.py").write_text(DEPENDENCY)
    (tmp_path / package / "web" / "main.py").write_text(APP_USING_IT.format(package=package))
    findings = diagnose(f"{package}.web.main:app", app_dir=tmp_path).findings
    assert [(f.file, f.line, f.kind) for f in findings] == [(f"{package}/deps.py", 4, "sync-set")]


def test_a_closure_with_an_unbound_variable_is_still_read(tmp_path):
    """A factory's `def` dependency whose closure holds a ContextVar and a
    name bound later (an empty cell, here never bound): the ContextVar is found."""
    module = f"closure_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(
        "from contextvars import ContextVar\n"
        "from fastapi import Depends, FastAPI\n"
        "def create_app():\n"
        "    tenant = ContextVar('tenant')\n"
        "    def dep():\n"
        "        tenant.set('x')\n"
        "        return audit\n"
        "    app = FastAPI()\n"
        "    app.get('/', dependencies=[Depends(dep)])(home)\n"
        "    return app\n"
        "    audit = None  # never bound\n"
        "async def home():\n"
        "    return {}\n"
    )
    findings = diagnose(f"{module}:create_app", factory=True, app_dir=tmp_path).findings
    assert [(f.line, f.kind) for f in findings] == [(6, "sync-set")]


def test_a_wildcard_allowed_host_gets_a_host_under_it(tmp_path):
    """TrustedHostMiddleware allows `*.example.org`: the probe asks as a
    host under it, and the middleware lets it through."""
    module = layered(tmp_path)
    diagnosis = diagnose(f"{module}:wildcard_host", app_dir=tmp_path)
    assert (diagnosis.status, diagnosis.notes, diagnosis.complete) == (200, [], True)
    (host,) = sys.modules[module].Hosts.seen  # what the app was asked as: a host name, no wildcard left
    assert re.fullmatch(r"[a-z0-9-]+\.example\.org", host), host


def test_a_host_a_mounts_own_middleware_allows_is_asked_for(tmp_path):
    """TrustedHostMiddleware given to a Mount (around the mounted app, in no
    app's own middleware list): the probe asks as the host it allows, and
    it lets the request through."""
    module = layered(tmp_path)
    diagnosis = diagnose(f"{module}:trusted_mount", app_dir=tmp_path)
    assert (diagnosis.notes, diagnosis.complete) == ([], True)
    assert [(layer.name, layer.sees_endpoint_values) for layer in diagnosis.layers] == [("TrustedHostMiddleware", True)]


def test_a_request_that_failed_before_its_endpoint_leaves_the_diagnosis_incomplete(tmp_path):
    """FailsUnderSub is observed by the root's probe request, then raises on
    the mount's: every layer has values, yet one request reached no endpoint."""
    module = layered(tmp_path)
    diagnosis = diagnose(f"{module}:fails_under_mount", app_dir=tmp_path)
    assert [layer.sees_endpoint_values for layer in diagnosis.layers] == [True]
    assert not diagnosis.complete and diagnosis.fix.startswith("Nothing to blame among the layers observed")


def test_a_class_dependency_is_no_function_to_scan(tmp_path):
    """FastAPI's `Depends(SomeClass)`: a class, not a `def` the thread pool
    runs as such; the scan passes it by."""
    module = f"class_dep_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(
        "from fastapi import Depends, FastAPI\n"
        "class Paging:\n"
        "    def __init__(self, page: int = 1):\n"
        "        self.page = page\n"
        "app = FastAPI()\n"
        "@app.get('/')\n"
        "async def home(paging: Paging = Depends(Paging)):\n"
        "    return {}\n"
    )
    assert diagnose(f"{module}:app", app_dir=tmp_path).findings == []


def test_a_decorated_def_endpoint_is_scanned_and_ordinary_calls_are_no_finding(tmp_path):
    """`@app.get` def endpoint: Python numbers its code from the decorator's
    line, the scan still finds the function; its other calls are no finding."""
    module, findings = findings_of(
        tmp_path,
        "def_endpoint",
        "from contextvars import ContextVar",
        "from fastapi import FastAPI",
        "tenant = ContextVar('tenant')",
        "app = FastAPI()",
        "@app.get('/')",
        "def home():",
        "    tenant.set(str(len('x')))",
        "    return {}",
    )
    assert findings == [(f"{module}.py", 7, "sync-set")]


def test_a_layer_that_fails_once_its_response_started_is_told_apart(tmp_path):
    """The client already has a status line: the failure came after the
    response started, not before the endpoint."""
    module = layered(tmp_path)
    notes = diagnose(f"{module}:half_answer", app_dir=tmp_path).notes
    assert notes == ["GET /__ctxlab_probe__ raised RuntimeError after the response was sent: half"]


ROUTED_APPS = """
from contextvars import ContextVar
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Host, Match, Route, Router

tenant = ContextVar("tenant", default=None)
user = ContextVar("user", default=None)
seen = {}  # the app's own record: what the endpoint and Audit saw


class Audit(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        tenant.set("acme")
        response = await call_next(request)
        seen["audit after"] = user.get()
        return response


async def items(request):
    user.set("ada")
    seen["endpoint"] = (request.url.hostname, tenant.get())
    return PlainTextResponse("items")


class Legacy(BaseRoute):  # a route class of the app's own: an ASGI app, no endpoint
    def __init__(self, path, app):
        self.path, self.app = path, app

    def matches(self, scope):
        return (Match.FULL, {}) if scope["path"] == self.path else (Match.NONE, {})

    async def handle(self, scope, receive, send):
        await self.app(scope, receive, send)


class Inline(Legacy):  # answers by itself: no app to put a probe around
    def __init__(self, path):
        self.path = path

    async def handle(self, scope, receive, send):
        response = await items(Request(scope, receive))
        await response(scope, receive, send)


hosted = Starlette(middleware=[Middleware(Audit)], routes=[Host("api.example.com", Router([Route("/items", items)]))])
hosted_route = Starlette(middleware=[Middleware(Audit)], routes=[Host("api.example.com", Route("/items", items))])
legacy = Starlette(middleware=[Middleware(Audit)], routes=[Legacy("/items", Route("/items", items))])
inline = Starlette(middleware=[Middleware(Audit)], routes=[Inline("/items")])
"""


@pytest.mark.parametrize(
    "app, host", [("hosted", "api.example.com"), ("hosted_route", "api.example.com"), ("legacy", None)]
)
def test_a_route_that_holds_an_app_is_probed_down_to_its_endpoint(tmp_path, app, host):
    """Starlette's Host hands the request to a router of its own or to any
    ASGI app (reached with --host), a route class of the app's own to its
    app: the endpoint there runs, and the layers are judged by it, as the
    app recorded."""
    module = f"routed_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(ROUTED_APPS)
    diagnosis = diagnose(f"{module}:{app}", app_dir=tmp_path, path="/items", host=host)
    seen = sys.modules[module].seen
    assert seen == {"endpoint": (host or seen["endpoint"][0], "acme"), "audit after": None}
    assert (diagnosis.status, diagnosis.notes, diagnosis.complete) == (200, [], True)
    # Audit's value reached the endpoint; the endpoint's never came back to Audit.
    assert [(layer.name, layer.reaches_endpoint, layer.sees_endpoint_values) for layer in diagnosis.layers] == [
        ("Audit", seen["endpoint"][1] == "acme", seen["audit after"] == "ada")
    ]


def test_a_path_the_hosts_router_lacks_reached_no_route(tmp_path):
    """Through Host into its router, which has no such path: no endpoint
    ran (the app's record is empty), and no layer is blamed for the 404."""
    module = f"routed_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(ROUTED_APPS)
    diagnosis = diagnose(f"{module}:hosted", app_dir=tmp_path, path="/missing", host="api.example.com")
    assert "endpoint" not in sys.modules[module].seen
    assert (diagnosis.status, diagnosis.complete) == (404, False)
    assert diagnosis.notes == [
        "GET /missing answered 404: no route of the app took it; pass --path with one of your routes"
    ]


def test_a_route_with_no_app_to_probe_leaves_the_layers_unobserved(tmp_path):
    """A route class that answers by itself holds nothing a probe can go
    around: its endpoint ran (the app's record), the layers are not judged."""
    module = f"routed_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(ROUTED_APPS)
    diagnosis = diagnose(f"{module}:inline", app_dir=tmp_path, path="/items")
    assert sys.modules[module].seen["endpoint"][1] == "acme"
    assert (diagnosis.status, diagnosis.complete) == (200, False)
    assert [(layer.name, layer.sees_endpoint_values) for layer in diagnosis.layers] == [("Audit", None)]


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(lambda text: ("# -*- coding: latin-1 -*-\n" + text).encode("latin-1"), id="latin-1"),
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="byte-order-mark"),
    ],
)
def test_an_own_module_in_the_encoding_python_reads_is_scanned(tmp_path, encoded):
    """A module Python imports (a PEP 263 coding line, or a UTF-8 byte order
    mark as some Windows editors save) is scanned like any other: its own
    pitfalls are found at their lines (the coding line counts as one)."""
    (tmp_path / "legacy.py").write_bytes(
        encoded(
            "import asyncio\n"
            "from contextvars import ContextVar\n"
            "GREETING = 'café'\n"
            "tenant = ContextVar('tenant')\n"
            "def pick():\n"
            "    tenant.set(GREETING)\n"
            "async def later():\n"
            "    await asyncio.get_running_loop().run_in_executor(None, print)\n"
        )
    )
    (tmp_path / "shop.py").write_text(
        "from fastapi import Depends, FastAPI\n"
        "from legacy import pick\n"
        "app = FastAPI()\n"
        "@app.get('/', dependencies=[Depends(pick)])\n"
        "async def home():\n"
        "    return {}\n"
    )
    code, document, err = ctxlab_json("probe", "shop:app", "--app-dir", str(tmp_path))
    first = 2 if encoded("").startswith(b"#") else 1
    found = [(f["file"], f["line"], f["kind"]) for f in document["findings"]]
    assert found == [("legacy.py", first + 5, "sync-set"), ("legacy.py", first + 7, "executor-no-copy")], err


def test_run_in_executor_on_a_process_pool_is_no_finding(tmp_path):
    """A job sent to a ProcessPoolExecutor runs in another process: the
    advice to submit copy_context().run cannot be followed there (Python
    refuses to pickle a Context, checked below), so only the thread pools'
    calls are findings."""
    import contextvars
    import pickle

    with pytest.raises(TypeError, match="Context"):
        pickle.dumps(contextvars.copy_context())
    module = f"pools_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(
        "import asyncio\n"
        "from concurrent import futures\n"
        "from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor\n"
        "from starlette.applications import Starlette\n"
        "shared = futures.ProcessPoolExecutor()\n"
        "class Jobs:\n"
        "    def __init__(self):\n"
        "        self.pool: ProcessPoolExecutor = ProcessPoolExecutor()\n"
        "    async def run(self):\n"
        "        loop = asyncio.get_running_loop()\n"
        "        await loop.run_in_executor(self.pool, print)\n"
        "        await loop.run_in_executor(shared, print)\n"
        "        await loop.run_in_executor(executor=ProcessPoolExecutor(), func=print)\n"
        "        with ProcessPoolExecutor() as pool, ThreadPoolExecutor() as threads:\n"
        "            await loop.run_in_executor(pool, print)\n"
        "            await loop.run_in_executor(threads, print)\n"
        "        await loop.run_in_executor(None, print)\n"
        "app = Starlette()\n"
    )
    code, document, err = ctxlab_json("probe", f"{module}:app", "--app-dir", str(tmp_path))
    assert [(f["line"], f["kind"]) for f in document["findings"]] == [
        (16, "executor-no-copy"),
        (17, "executor-no-copy"),
    ]
