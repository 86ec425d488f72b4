"""Tracing never changes what an app observes: every bundled scenario
gives the same responses and the same probe observations with the tracer
on as without it."""

from __future__ import annotations

import pytest

from ctxlab import engine, report
from ctxlab.config import RunConfig
from ctxlab.scenario import catalog
from ctxlab.tracer import Tracer, TraceRecorder

ENTRIES = catalog()


def observed(result: report.ScenarioReport) -> list[tuple]:
    # Context labels are left out: the tracer marks contexts the probes
    # never saw, which renumbers them without changing any value.  Order is
    # left out too: probes in two threads racing each other (as in
    # context-entered-twice) record in either order, traced or not.
    rows = [(o.request, o.probe, o.var, o.observed, o.task, o.parent_task, o.thread) for o in result.observations]
    return sorted(rows, key=repr)


@pytest.mark.parametrize("loop", [None, "uvloop"])
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_tracing_changes_nothing_the_app_observes(name, loop):
    entry = ENTRIES[name]
    if loop is not None:
        pytest.importorskip(loop)
    config = RunConfig(server="asgi" if "asgi" in entry.servers else entry.servers[0], loop=loop)
    untraced = engine.run_entry(entry, config)
    tracer = Tracer(TraceRecorder())
    with tracer:
        traced = engine.run_entry(entry, config)
    assert traced.error == untraced.error  # a request answering otherwise is an error
    assert observed(traced) == observed(untraced)
    assert traced.status == untraced.status


def test_the_tracer_was_on_while_the_scenario_ran():
    tracer = Tracer(TraceRecorder())
    with tracer:
        engine.run_entry(ENTRIES["bad-only"], RunConfig())
    assert {"get", "set"} <= {event.op for event in tracer.events}
