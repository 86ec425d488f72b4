"""`ctxlab probe` on apps wired as popular middleware libraries' READMEs
show (tests/fixtures/real_apps): every field it reports must match what the
app itself recorded (truth.py, no ctxlab inside), in process and on a real
uvicorn.  Each app runs in its own processes: Sentry's and OpenTelemetry's
instrumentation patch Starlette globally."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ctxlab

APPS = Path(__file__).parent / "fixtures" / "real_apps"
MODULES = [
    "otel_fastapi",
    "otel_asgi_starlette",
    "sentry_starlette_context",
    "slowapi_trusted",
    "lifespan_apikey",
    "mounted_subapps",
    "mounted_admin",
    "mounted_wrapped",
    "prometheus_brotli",
    "shop_app",
    "starlette_def_routes",
    "teardown_raises",
    "sentry_asgi_wrapper",
    "error_catching",
]
TWINS = {"ContextMiddleware": "RawContextMiddleware", "SlowAPIMiddleware": "SlowAPIASGIMiddleware"}


def fixture(name):
    """The fixture's declarations (PATH, LAYERS, FINDINGS, ...), read from
    its source: importing it here would instrument this process."""
    tree = ast.parse((APPS / f"{name}.py").read_text())
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
    }


def truth(name, server):
    done = subprocess.run(
        [sys.executable, str(APPS / "truth.py"), str(APPS), name, server],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def expected_culprits(rows):
    """From the recorded truth: the innermost layer that did not see the
    endpoint's value, the BaseHTTPMiddleware layers outside it (they cut by
    construction), and the innermost layer whose values did not reach it."""
    observed = [row for row in rows if row[3] is not None]
    blind = [row for row in observed if not row[3]]
    culprits = set()
    if blind:
        culprits.add(blind[-1][0])
        culprits |= {row[0] for row in blind if row[1] != "asgi"}
    lost = [row for row in observed if not row[4]]
    if lost:
        culprits.add(lost[-1][0])
    return [row[0] for row in rows if row[0] in culprits]


def probe_args(name, declared):
    target = declared.get("TARGET", f"{name}:app")
    return ["probe", target, "--app-dir", str(APPS), "--path", declared["PATH"], *declared.get("OPTIONS", [])]


@pytest.mark.parametrize("server", ["asgi", "uvicorn"])
@pytest.mark.parametrize("name", MODULES)
def test_every_field_matches_what_the_app_recorded(name, server):
    declared = fixture(name)
    recorded = truth(name, server)
    rows = recorded["layers"]
    # the recorders found the layers the app's author lists
    assert [tuple(row[:3]) for row in rows] == [tuple(layer) for layer in declared["LAYERS"]]
    code, out, err = ctxlab(*probe_args(name, declared), "--server", server, "--json")
    assert "Traceback" not in err
    document = json.loads(out)
    reported = [
        [layer["name"], layer["kind"], layer.get("mount"), layer["sees_endpoint_values"], layer["reaches_endpoint"]]
        for layer in document["layers"]
    ]
    assert reported == rows
    for layer in document["layers"]:
        assert ("note" in layer) == (layer["sees_endpoint_values"] is None)
    culprits = expected_culprits(rows)
    assert document["verdict"]["culprits"] == culprits
    assert document["verdict"]["ok"] == (not culprits)
    unobserved = any(row[3] is None for row in rows)
    assert code == (1 if culprits else 2 if unobserved else 0)
    found = [(f["file"], f["line"], f["kind"]) for f in document["findings"]]
    assert found == [tuple(finding) for finding in declared["FINDINGS"]]


@pytest.mark.parametrize("name", MODULES)
def test_the_table_names_the_right_layers(name):
    declared = fixture(name)
    rows = truth(name, "asgi")["layers"]
    culprits = expected_culprits(rows)
    code, out, err = ctxlab(*probe_args(name, declared))
    assert "Traceback" not in err
    for layer in declared["LAYERS"]:
        assert layer[0] in out
    if culprits:
        assert f"cut by: {', '.join(culprits)}" in out
        fix = out[out.index("cut by:") :]
        for culprit in culprits:
            assert culprit in fix.split("\n", 1)[1]
            if culprit in TWINS:
                assert TWINS[culprit] in fix
    elif any(row[3] is None for row in rows):
        assert "not observed" in out
    else:
        assert "ok: values travel through every layer" in out
