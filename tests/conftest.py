import json
import os
import subprocess
import sys

import pytest

from ctxlab import report, runner
from ctxlab.config import RunConfig
from ctxlab.engine import run_entry
from ctxlab.scenario import Scenario, catalog


def run_named(name, server="asgi", spec_version=None, loop=None, http=None):
    """Run a bundled scenario for real and compare it, as `ctxlab run` does."""
    return run_entry(catalog()[name], RunConfig(server, loop, http, spec_version=spec_version))


def run_app(build, expect, **options):
    """Run an app built in a test as a one-off scenario."""
    scenario = Scenario(name="test", summary="", build=build, expect=expect, **options)
    return report.compare(scenario, runner.run(scenario), RunConfig())


def seen(result, probe, var=None):
    """The observations of one probe (and var), in order."""
    return [o for o in result.observations if o.probe == probe and (var is None or o.var == var)]


def python_path(*directories) -> str:
    """PYTHONPATH with `directories` first, and what it held after them:
    `make mutate` puts its mutated copy of ctxlab there, and a test that
    replaced it ran ctxlab's own code under every mutant."""
    return os.pathsep.join([*map(str, directories), *filter(None, [os.environ.get("PYTHONPATH")])])


def ctxlab(*args, env=None, check=None):
    """The real CLI in a subprocess: (exit code, stdout, stderr)."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    full_env.pop("FORCE_COLOR", None)
    full_env.update(env or {})
    for name in [name for name, value in full_env.items() if value is None]:
        del full_env[name]  # None in `env` removes a variable
    done = subprocess.run(
        [sys.executable, "-m", "ctxlab", *args], capture_output=True, text=True, env=full_env, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


def ctxlab_json(*args, **kwargs):
    code, out, err = ctxlab(*args, "--json", **kwargs)
    return code, json.loads(out), err


@pytest.fixture
def asgi_app():
    """A tiny pure ASGI app factory: runs `handler(scope)` then answers 200."""

    def make(handler):
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await handler(scope)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        return app

    return make
