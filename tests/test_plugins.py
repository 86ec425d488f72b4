"""Scenarios from installed packages, through the `ctxlab.scenarios` entry points."""

import textwrap

from conftest import ctxlab, ctxlab_json, python_path

SCENARIO = """
from contextvars import ContextVar

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ctxlab.probe import probe
from ctxlab.scenario import scenario

team = ContextVar("team", default=None)


async def endpoint(request):
    team.set("payments")
    probe("endpoint", team)
    return PlainTextResponse("ok")


@scenario("{name}", summary="A team's own scenario", tags=["team"], expect={{"endpoint": {{"team": "payments"}}}})
def build():
    return Starlette(routes=[Route("/", endpoint)])
"""


def install(site, name):
    """A minimal installed distribution whose entry point names a package."""
    package = site / "teamscenarios"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "checks.py").write_text(SCENARIO.format(name=name))
    info = site / "teamscenarios-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: teamscenarios\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [ctxlab.scenarios]
        team = teamscenarios
    """)
    )
    return {"PYTHONPATH": python_path(site)}


def test_installed_scenarios_are_listed_and_run(tmp_path):
    env = install(tmp_path / "site", "team-payments")
    code, rows, _ = ctxlab_json("list", "--tag", "team", env=env)
    assert code == 0 and [row["name"] for row in rows] == ["team-payments"]
    code, document, _ = ctxlab_json("run", "team-payments", env=env)
    assert code == 0 and document["scenarios"][0]["observations"][0]["observed"] == "payments"


def test_an_installed_scenario_may_not_take_a_bundled_name(tmp_path):
    env = install(tmp_path / "site", "bad-only")
    code, _, err = ctxlab("list", env=env)
    assert code == 2 and "'bad-only' is declared twice: middleware_order.py and checks.py" in err
