"""The Starlette docs PR cases, run for real: who sees the endpoint's value."""

import pytest
from conftest import run_named, seen

VALUE = {"random_int": 42}


def observed(name):
    result = run_named(name)
    assert result.status == "pass", (result.error, result.drifted)
    return result, {o.probe: o.observed for o in result.observations}


def test_bad_then_shiny_nobody_outside_the_endpoint_sees_it():
    result, values = observed("bad-then-shiny")
    assert result.onion == ["ShinyMiddleware", "BadMiddleware"]
    assert values == {"endpoint": VALUE, "bad.after": None, "shiny.after": None}


def test_shiny_then_bad_only_shiny_sees_it():
    result, values = observed("shiny-then-bad")
    assert result.onion == ["BadMiddleware", "ShinyMiddleware"]
    assert values == {"endpoint": VALUE, "shiny.after": VALUE, "bad.after": None}
    # Shiny shares the endpoint's task: the child task Bad started.
    (endpoint,) = seen(result, "endpoint")
    (shiny,) = seen(result, "shiny.after")
    (bad,) = seen(result, "bad.after")
    assert shiny.task == endpoint.task == "T2" and endpoint.parent_task == bad.task == "T1"
    assert shiny.context == endpoint.context != bad.context


@pytest.mark.parametrize("name, value", [("bad-only", None), ("shiny-only", VALUE)])
def test_lone_middleware(name, value):
    result, values = observed(name)
    after = "bad.after" if name == "bad-only" else "shiny.after"
    assert values[after] == value


def test_pitfall_rows_are_marked_where_naive_differs():
    result, _ = observed("bad-then-shiny")
    assert {o.probe for o in result.observations if o.pitfall} == {"bad.after", "shiny.after"}
    assert all(o.naive == VALUE for o in result.observations if o.pitfall)
