"""The names scenario authors may import; changing them breaks their scenarios."""

import ast
import inspect

import ctxlab
from ctxlab import probe, scenario


def test_package_holds_only_the_version():
    (statement,) = ast.parse(inspect.getsource(ctxlab)).body
    assert [target.id for target in statement.targets] == ["__version__"]


def test_probe_api():
    assert sorted(probe.__all__) == ["UNSET", "attempt", "note", "probe", "raised"]


def test_scenario_api():
    assert sorted(scenario.__all__) == [
        "ClientRequest", "Env", "Varies", "by_flag", "by_server", "by_version", "per_request", "scenario",
    ]  # fmt: skip
