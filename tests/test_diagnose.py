"""`ctxlab probe` on apps written as users write them: the report must
match what the apps' own middleware really saw."""

import sys
from pathlib import Path

import pytest
from conftest import ctxlab, ctxlab_json

from ctxlab.diagnose import diagnose

APPS = Path(__file__).parent / "fixtures" / "user_apps"
sys.path.insert(0, str(APPS))
import mixes  # noqa: E402

KIND = {"base": "base_http", "pure": "asgi", "isolating": "asgi", "http": "http_decorator"}


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
        ("starlette_isolating", ["Outer", "Fresh"]),
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
    assert document["layers"][0] == {"name": "Bad", "kind": "base_http", "sees_endpoint_values": False, "reaches_endpoint": True}
    assert document["verdict"]["culprits"] == ["Bad"] and "pure ASGI" in document["verdict"]["fix"]


def test_factory_and_table_output():
    code, out, _ = ctxlab("probe", "mixes:create_app", "--factory", "--app-dir", str(APPS))
    assert code == 1 and "Made" in out and "base_http" in out and "cut by: Made" in out
    code, _, _ = ctxlab("probe", "mixes:fastapi_all_pure", "--app-dir", str(APPS))
    assert code == 0


@pytest.mark.parametrize(
    "target, extra, message",
    [
        ("nosuchmodule:app", [], "cannot import 'nosuchmodule'"),
        ("mixes:ap", [], "has no attribute 'ap'"),
        ("mixes:config", [], "mixes:config is a dict, not a Starlette or FastAPI application"),
        ("mixes:raw_asgi", [], "is an ASGI callable, not a Starlette or FastAPI application"),
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
    )
    code, document, _ = ctxlab_json("probe", "svc:app", "--app-dir", str(tmp_path))
    found = [(f["file"], f["line"], f["kind"]) for f in document["findings"]]
    assert found == [
        ("svc.py", 6, "sync-set"),
        ("svc.py", 8, "sync-set"),
        ("svc.py", 10, "sync-yield-reset"),
        ("svc.py", 17, "executor-no-copy"),
    ]


def test_an_error_status_on_the_users_route_is_noted():
    code, _, err = ctxlab("probe", "mixes:starlette_bare", "--app-dir", str(APPS), "--path", "/missing")
    assert code == 0 and "GET /missing answered 404" in err


def test_static_findings_skip_virtualenvs_and_vendored_code(tmp_path):
    """Only the app's own code is read: a pitfall inside its virtualenv or
    node_modules belongs to someone else."""
    pitfall = "import asyncio\nasync def f():\n    await asyncio.get_running_loop().run_in_executor(None, print)\n"
    (tmp_path / "svc.py").write_text("from fastapi import FastAPI\napp = FastAPI()\n" + pitfall)
    for vendored in (".venv/lib", "venv/lib", "python/site-packages", "node_modules/x"):
        (tmp_path / vendored).mkdir(parents=True)
        (tmp_path / vendored / "vendored.py").write_text(pitfall)
    code, document, _ = ctxlab_json("probe", "svc:app", "--app-dir", str(tmp_path))
    assert [(f["file"], f["line"], f["kind"]) for f in document["findings"]] == [("svc.py", 5, "executor-no-copy")]
