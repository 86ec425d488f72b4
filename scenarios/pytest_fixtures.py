"""Testing the app: a ContextVar set in an async pytest fixture.

A test suite logs a user in (or opens a transaction, or binds a request ID)
in an async fixture by setting a ContextVar, and the async test reads it.
pytest-asyncio ran each async fixture in a task of its own, so the set
stayed in that task's context and the test saw the default.  0.25 copies
the values a fixture changed into the test's context, on Python 3.11 and
later only (it needs `asyncio.Runner` and `Task(context=...)`); 1.1 does it
on 3.10 too, through `backports.asyncio.runner`.

This scenario writes a tiny test module, runs a real `pytest` on it in a
subprocess with the installed pytest-asyncio (plugin autoloading off, so
only pytest-asyncio takes part), and records what the fixture and the test
saw.  Why 0.25 to 1.0 still lose it on 3.10 (read in their plugin.py):
`_create_task_in_context` can pass `context=` to `create_task` only on
3.11+; on 3.10 it silently creates the task without it, so the context
it later copies changes from was never the one the fixture ran in.
Checked in throwaway environments: 0.21.2 and 0.24.0 lose the value on
3.10 and 3.11; 0.25.0 and 1.0.0 keep it on 3.11 and lose it on 3.10; 1.1.0
keeps it on both.

Sources: pytest-dev/pytest-asyncio#127 ("ContextVar not propagated from
fixture to test", open 2019 to 2025), PR #1008 (0.25, Python 3.11+) and
PR #1152 (1.1.0, Python 3.10); the same report against quart: pallets/quart#149.
"""

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import note
from ctxlab.scenario import Varies, scenario

TEST_MODULE = """
import contextvars, os, pathlib
import pytest, pytest_asyncio

user = contextvars.ContextVar("user", default="anonymous")
seen = pathlib.Path(os.environ["CTXLAB_SEEN"])


@pytest_asyncio.fixture
async def logged_in():
    user.set("alice")
    (seen / "fixture").write_text(user.get())
    yield


@pytest.mark.asyncio
async def test_sees_the_user(logged_in):
    (seen / "test").write_text(user.get())
"""

INI = """[pytest]
asyncio_default_fixture_loop_scope = function
"""


def run_pytest() -> dict:
    """Run pytest on TEST_MODULE; what the fixture and the test saw."""
    with tempfile.TemporaryDirectory() as directory:
        here = Path(directory)
        (here / "test_login.py").write_text(TEST_MODULE)
        (here / "pytest.ini").write_text(INI)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update(CTXLAB_SEEN=directory, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "pytest_asyncio.plugin", "-p", "no:cacheprovider"],
            cwd=directory, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        seen = {name: (here / name).read_text() for name in ("fixture", "test") if (here / name).exists()}
        if len(seen) < 2:  # the run itself broke: show why instead of a bare unset
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:]
            seen.setdefault("test", f"<pytest exited {done.returncode}: {' '.join(tail)}>")
        return seen


async def run_the_suite(request):
    seen = await asyncio.to_thread(run_pytest)
    for name, value in seen.items():
        note(name, "user", value)
    return PlainTextResponse("ok")


def fixture_value_reaches_test(env):
    if env.has("pytest-asyncio", ">=1.1"):
        return True
    return env.has("pytest-asyncio", ">=0.25") and sys.version_info >= (3, 11)


@scenario(
    "pytest-async-fixture",
    summary="A ContextVar set in an async fixture is missing in the test on pytest-asyncio < 0.25 (< 1.1 on 3.10)",
    tags=["testing", "pytest", "tasks", "lost", "python-version"],
    requires={"pytest-asyncio": ">=0.17"},
    timeout=90,
    expect={
        "fixture": {"user": "alice"},
        "test": {
            "user": Varies(
                'pytest-asyncio>=1.1, or >=0.25 on python>=3.11: "alice"; else "anonymous"',
                lambda env: "alice" if fixture_value_reaches_test(env) else "anonymous",
            )
        },
    },
    naive={"test": {"user": "alice"}},
    why="Before 0.25, pytest-asyncio ran every async fixture's setup in a task of "
    "its own (run_until_complete on the fixture's coroutine), so a set inside it "
    "landed in that task's copy of the context and the test, another task, started "
    "from the untouched one. 0.25 copies the variables a fixture changed back into "
    "the context the test runs in, but only where asyncio lets a task run in a "
    "given context (3.11+); 1.1 brings that to 3.10.",
    fix="Upgrade to pytest-asyncio >= 1.1 (>= 0.25 on Python 3.11+); on older ones, "
    "set the variable in the test itself or in a sync fixture, or have the fixture "
    "return the value and set it in the test.",
)
def pytest_async_fixture():
    return Starlette(routes=[Route("/", run_the_suite)])
