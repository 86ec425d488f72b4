"""Tracing never changes what an app observes: every bundled scenario
gives the same responses and the same probe observations with the tracer
on as without it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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


def test_stopping_puts_everything_back():
    """What a trace changes in the process (3.10/3.11: ContextVar's methods
    and copy_context; 3.12+: a sys.monitoring tool; all: the objects it set
    aside from the garbage collector) is as before once it stops."""
    import contextvars
    import gc
    import sys
    import weakref

    methods = (contextvars.ContextVar.get, contextvars.ContextVar.set, contextvars.ContextVar.reset)
    copy_context = contextvars.copy_context
    tools = [sys.monitoring.get_tool(tool) for tool in range(6)] if sys.version_info >= (3, 12) else []

    class Node:
        pass

    cycle = Node()
    cycle.me = cycle
    collected = []
    weakref.finalize(cycle, collected.append, True)
    with Tracer(TraceRecorder()):
        del cycle  # garbage while the trace holds it aside
        gc.collect()
    gc.collect()
    assert collected == [True]
    assert (contextvars.ContextVar.get, contextvars.ContextVar.set, contextvars.ContextVar.reset) == methods
    assert contextvars.copy_context is copy_context
    assert [sys.monitoring.get_tool(tool) for tool in range(6)] == tools if tools else True
    # The tool it used asks for no event any more.
    assert all(sys.monitoring.get_events(tool) == 0 for tool, name in enumerate(tools) if name is None)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
def test_the_last_free_monitoring_tool_id_is_the_one_used():
    """Other tools (a debugger, coverage, a profiler) hold every id but the
    last: the trace takes that one, and sees a set."""
    import contextvars

    monitoring = sys.monitoring
    taken = [tool for tool in range(5) if monitoring.get_tool(tool) is None]
    for tool in taken:
        monitoring.use_tool_id(tool, "another tool")
    try:
        var = contextvars.ContextVar("watched")
        tracer = Tracer(TraceRecorder())
        with tracer:
            used = monitoring.get_tool(5)
            contextvars.copy_context().run(lambda: var.set("x"))
    finally:
        for tool in taken:
            monitoring.free_tool_id(tool)
    assert used == "ctxlab trace"
    assert [(e.op, e.value) for e in tracer.events] == [("set", "x")]


def test_a_traced_variable_answers_as_an_untraced_one():
    """get, set and reset through the tracer: same values, same tokens,
    same exceptions."""
    import contextvars

    var = contextvars.ContextVar("answers")
    tracer = Tracer(TraceRecorder())
    with tracer:
        with pytest.raises(LookupError):
            var.get()
        assert var.get("default") == "default"
        token = var.set("a")
        assert type(token) is contextvars.Token and token.var is var and var.get() == "a"
        var.reset(token)
        with pytest.raises(RuntimeError):
            var.reset(token)
        assert var.get(None) is None
    ops = [(e.op, e.value) for e in tracer.events]
    assert ops == [("get", "<unset>"), ("get", "<unset>"), ("set", "a"), ("get", "a"), ("reset", "<unset>"),
                   ("reset", "<unset>"), ("get", "<unset>")]  # fmt: skip


def test_calls_made_from_c_are_seen_before_3_12_only():
    """`ctx.run(var.set, x)`: C calls the method.  sys.monitoring (3.12+)
    reports calls made by Python code only; on 3.10/3.11 the tracer's own
    ContextVar methods are what C calls."""
    import contextvars
    import sys

    var = contextvars.ContextVar("from_c")
    tracer = Tracer(TraceRecorder())
    with tracer:
        contextvars.copy_context().run(var.set, "x")
    assert [e.op for e in tracer.events] == (["set"] if sys.version_info < (3, 12) else [])


def test_each_event_names_the_line_that_made_the_call():
    """The caller of a get, a set and a reset is the app's own line, on
    every Python (not the function that stands in for the method on 3.10
    and 3.11)."""
    import contextvars

    var = contextvars.ContextVar("called")

    def touch():
        token = var.set("x")
        var.get()
        var.reset(token)

    tracer = Tracer(TraceRecorder())
    with tracer:
        contextvars.copy_context().run(touch)
    first = touch.__code__.co_firstlineno
    assert [(e.op, e.caller.path, e.caller.line) for e in tracer.events] == [
        ("set", __file__, first + 1),
        ("get", __file__, first + 2),
        ("reset", __file__, first + 3),
    ]


def test_iterating_what_a_copy_ran_is_no_snapshot_read():
    """The code iterates the list a function returned when run in the copy
    (or a list made of it), never the copy itself: the variable the
    request set is not read.  (On 3.10 and 3.12 each loop's GET_ITER, or
    the store of the list, comes within six instructions of the load of
    copy_context, where the tracer looks for the copy's own iteration, and
    was once taken for it.)"""
    import contextvars

    var = contextvars.ContextVar("set_before")
    got = []

    def listed(*items):
        return list(items)

    def request():
        var.set("x")
        for item in contextvars.copy_context().run(listed, "a", "b"):
            got.append(item)
        for item in contextvars.copy_context().run(listed):
            got.append(item)
        results = list(contextvars.copy_context().run(listed, "c"))
        for item in results:
            got.append(item)

    tracer = Tracer(TraceRecorder())
    tracer.recorder.in_flight.add(1)  # during request 1
    with tracer:
        contextvars.copy_context().run(request)
    assert got == ["a", "b", "c"]
    assert [(e.op, e.var.name) for e in tracer.events] == [("set", "set_before")]


def test_a_call_that_took_the_copy_stored_past_the_window_is_no_snapshot_read():
    """The copy goes into a call whose result is stored and iterated: the
    store is the seventh instruction after the load of copy_context on 3.10
    and 3.12, one past the window in which a store is taken for the copy's."""
    import contextvars

    var = contextvars.ContextVar("set_before")

    def pack(*items):
        return [type(item).__name__ for item in items]

    def request():
        var.set("x")
        rows = pack(contextvars.copy_context(), 1, 2, 3, 4)
        return [row for row in rows]

    tracer = Tracer(TraceRecorder())
    tracer.recorder.in_flight.add(1)  # during request 1
    with tracer:
        assert contextvars.copy_context().run(request) == ["Context", "int", "int", "int", "int"]
    assert [(e.op, e.var.name) for e in tracer.events] == [("set", "set_before")]


def test_a_copy_handed_on_with_more_arguments_is_no_snapshot_read():
    """The copy goes into a helper with a second argument, and the loop
    iterates what the helper returns: the load of that argument follows
    the copy's call, and is no `.items()` to read through."""
    import contextvars

    var = contextvars.ContextVar("handed_on")

    def names(context, prefix):
        return [prefix + str(len(context))]

    def request():
        var.set("x")
        return [row for row in names(contextvars.copy_context(), "n")]

    tracer = Tracer(TraceRecorder())
    tracer.recorder.in_flight.add(1)  # during request 1
    with tracer:
        rows = contextvars.copy_context().run(request)
    assert rows[0].startswith("n") and [e for e in tracer.events if e.snapshot] == []


def test_a_loop_right_after_the_copy_is_stored_is_no_snapshot_read():
    """The copy is stored, then a loop over something else begins at once
    and runs a function in the copy: nothing iterates the copy."""
    import contextvars

    var = contextvars.ContextVar("stored_then_run")
    got = []

    def request():
        var.set("x")
        ctx = contextvars.copy_context()
        for item in ["a"]:
            got.append(ctx.run(var.get) + item)

    tracer = Tracer(TraceRecorder())
    tracer.recorder.in_flight.add(1)  # during request 1
    with tracer:
        contextvars.copy_context().run(request)
    assert got == ["xa"]
    assert [e for e in tracer.events if e.snapshot] == []


def test_a_snapshot_read_by_the_first_instruction_of_a_function_is_seen(tmp_path):
    """A module imported while the trace runs (as a lazy import is) takes
    `copy_context` by name, and a function iterates the copy first thing:
    on 3.10, whose code has no RESUME, the load of `copy_context` is the
    function's first instruction.  The variable the request set is read
    once, with the value the copy held."""
    import contextvars
    import importlib.util

    (tmp_path / "lazy_reader.py").write_text(
        "from contextvars import copy_context\n"
        "def read(name):\n"
        "    for var, value in copy_context().items():\n"
        "        if var.name == name:\n"
        "            return value\n"
    )
    spec = importlib.util.spec_from_file_location("lazy_reader", tmp_path / "lazy_reader.py")
    var = contextvars.ContextVar("set_first")
    held = []

    def request():
        var.set("x")
        reader = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reader)
        held.append(reader.read("set_first"))

    tracer = Tracer(TraceRecorder())
    tracer.recorder.in_flight.add(1)  # during request 1
    with tracer:
        contextvars.copy_context().run(request)
    assert held == ["x"]
    assert [(e.var.name, e.value) for e in tracer.events if e.snapshot] == [("set_first", held[0])]


def test_a_reset_names_the_set_whose_token_it_was_given():
    """The hooks never see the token: the reset's set is found among the
    caller's own sets, past a later set of the same variable elsewhere."""
    import contextvars

    var = contextvars.ContextVar("matched")

    def inner():
        var.set("inner")  # a later set by other code, its token dropped

    def outer():
        token = var.set("outer")
        inner()
        var.reset(token)

    def reset_elsewhere(token):  # as a dependency's teardown does
        var.reset(token)

    tracer = Tracer(TraceRecorder())
    with tracer:
        outer()
        reset_elsewhere(var.set("given away"))
    outer_set, inner_set, given_set = [e for e in tracer.events if e.op == "set"]
    first_reset, second_reset = [e for e in tracer.events if e.op == "reset"]
    assert (outer_set.value, inner_set.value) == ("outer", "inner")
    assert first_reset.token_set is outer_set
    assert second_reset.token_set is given_set  # no set of its own function: the latest of the variable
    assert [e.seq for e in tracer.events] == [1, 2, 3, 4, 5]  # numbered from 1, as the JSON shows them


def test_a_reset_is_matched_by_the_tokens_of_its_own_variable():
    """The function holds a token of another variable too, whose old value
    is not the one this reset restores: only the reset variable's own
    token tells which of its sets the reset undoes."""
    import contextvars

    var = contextvars.ContextVar("matched")
    other = contextvars.ContextVar("other")

    def both():
        token = var.set("first")
        other_token = other.set("y")
        var.set("second")  # a later set, its token dropped
        var.reset(token)
        other.reset(other_token)

    tracer = Tracer(TraceRecorder())
    with tracer:  # `other` had a value before: its token's old value is "before", `var`'s none
        contextvars.copy_context().run(lambda: (other.set("before"), both()))
    first_set = next(e for e in tracer.events if e.op == "set" and e.value == "first")
    reset = next(e for e in tracer.events if e.op == "reset" and e.var is var)
    assert reset.token_set is first_set


def test_a_set_of_another_variable_in_the_same_function_is_not_the_tokens():
    """`other` was unset too when the function set it, after `var`: the
    reset of `var`'s token names `var`'s set."""
    import contextvars

    var = contextvars.ContextVar("mine")
    other = contextvars.ContextVar("another")

    def both():
        token = var.set("mine")
        other.set("another")
        var.reset(token)

    tracer = Tracer(TraceRecorder())
    with tracer:
        contextvars.copy_context().run(both)
    mine = next(e for e in tracer.events if e.op == "set" and e.var is var)
    (reset,) = [e for e in tracer.events if e.op == "reset"]
    assert reset.token_set is mine


def test_a_later_set_elsewhere_with_the_same_old_value_is_not_the_tokens():
    """Another function set the variable later, in a fresh context where it
    was unset too: the reset still names its own function's set."""
    import contextvars

    var = contextvars.ContextVar("own")

    def elsewhere():
        var.set("elsewhere")

    def outer():
        token = var.set("outer")
        contextvars.Context().run(elsewhere)
        var.reset(token)

    tracer = Tracer(TraceRecorder())
    with tracer:
        contextvars.copy_context().run(outer)
    outer_set = next(e for e in tracer.events if e.op == "set" and e.value == "outer")
    (reset,) = [e for e in tracer.events if e.op == "reset"]
    assert reset.token_set is outer_set


def traced_reset(var, token, raises: type[Exception]):
    """`var.reset(token)` while a trace runs: the reset it recorded, and
    the exception Python raised (the one expected, and only once)."""
    caught = []
    tracer = Tracer(TraceRecorder())
    with tracer:
        try:
            var.reset(token)
        except raises as error:
            caught.append(error)
    (reset,) = [e for e in tracer.events if e.op == "reset"]
    (error,) = caught
    return reset, error


def test_a_reset_that_raises_with_a_token_of_an_unseen_set_raises_as_untraced():
    """The token was made before the trace, in another context: the reset
    raises the ValueError Python gives it, and is recorded as raised with
    no set of its own."""
    import contextvars

    var = contextvars.ContextVar("early")
    token = contextvars.copy_context().run(var.set, "made before the trace")
    reset, error = traced_reset(var, token, ValueError)
    assert reset.token_set is None
    assert reset.raised == f"ValueError: the token {str(error).rsplit('> ', 1)[1]}"


def test_a_token_used_before_the_trace_raises_as_python_says():
    """Made and used before the trace, in this very context: the second
    reset raises RuntimeError, as Python words it, though no set of the
    trace made the token."""
    import contextvars

    var = contextvars.ContextVar("early")
    token = var.set("made before the trace")
    var.reset(token)
    reset, error = traced_reset(var, token, RuntimeError)
    assert reset.raised == f"RuntimeError: the token {str(error).rsplit('> ', 1)[1]}"


def test_a_variable_stays_the_library_s_that_set_it_when_another_resets_its_token(tmp_path):
    """Two libraries: `liba` sets a variable twice and hands the second
    token to `libb`, which resets it.  The variable is still the one `liba`
    set (libb never set it), so liba's snapshot reads it, with the value
    that liba's own snapshot held, and libb's snapshot reads nothing."""
    import contextvars
    import importlib.util

    site = tmp_path / "site"
    site.mkdir()
    snapshot = (
        "import contextvars\n"
        "held = []\n"
        "def snapshot(var):\n"
        "    for each, value in contextvars.copy_context().items():\n"
        "        if each is var:\n"
        "            held.append(value)\n"
    )
    (site / "liba.py").write_text(snapshot + "def bind(var, value):\n    return var.set(value)\n")
    (site / "libb.py").write_text(snapshot + "def unbind(var, token):\n    var.reset(token)\n")
    liba, libb = [
        importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, site / f"{name}.py"))
        for name in ("liba", "libb")
    ]
    for library in (liba, libb):
        library.__spec__.loader.exec_module(library)
    var = contextvars.ContextVar("shared")

    def request():
        liba.bind(var, "first")
        libb.unbind(var, liba.bind(var, "second"))
        liba.snapshot(var)
        libb.snapshot(var)

    tracer = Tracer(TraceRecorder())
    tracer.roots.insert(0, str(site.resolve()) + os.sep)  # both are libraries, as if installed
    tracer.recorder.in_flight.add(1)  # during request 1
    with tracer:
        contextvars.copy_context().run(request)
    assert tracer.owner(liba.__file__) == "liba" and tracer.owner(libb.__file__) == "libb"
    assert liba.held == libb.held == ["first"]  # both copies really held it
    reads = [(e.caller.path, e.value) for e in tracer.events if e.snapshot]
    assert reads == [(liba.__file__, liba.held[0])]


def test_a_task_made_deep_in_a_library_still_names_the_app_function_below(tmp_path):
    """The app calls a library that creates a task from deep inside: the
    frames from the event loop's create_task down to the app's function are
    twelve, the most a task's origin holds, and the last is the app's."""
    import asyncio
    import importlib.util

    site = tmp_path / "site"
    site.mkdir()
    (site / "deeplib.py").write_text(
        "import asyncio\n"
        "def spawn(depth, coro):\n"
        "    return spawn(depth - 1, coro) if depth else asyncio.create_task(coro)\n"
    )
    spec = importlib.util.spec_from_file_location("deeplib", site / "deeplib.py")
    deeplib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deeplib)
    below = []  # frames from the loop's create_task down to the app's, counted by a factory of our own

    def counting_factory(loop, coro, **kwargs):
        frame, frames = sys._getframe(1), 1
        while frame.f_code is not app.__code__:
            frame, frames = frame.f_back, frames + 1
        below.append(frames)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def app(depth, factory):
        asyncio.get_running_loop().set_task_factory(factory)
        task = deeplib.spawn(depth, asyncio.sleep(0))
        asyncio.get_running_loop().set_task_factory(None)  # asyncio.run's own tasks at the end are not ours
        await task
        return task

    asyncio.run(app(0, counting_factory))
    depth = 12 - below[0]  # the library frames that put the app's function twelfth
    asyncio.run(app(depth, counting_factory))
    assert below[1] == 12
    recorder = TraceRecorder()
    tracer = Tracer(recorder)
    tracer.roots.insert(0, str(site.resolve()) + os.sep)  # deeplib is a library, as if installed
    task = asyncio.run(app(depth, recorder.task_factory))
    stack = recorder.origins[task].stack
    assert (stack[-1].path, stack[-1].function.rpartition(".")[2], len(stack)) == (__file__, "app", 12)


def test_a_library_call_site_setting_an_unwatched_variable_still_reports_a_watched_one():
    """structlog's bind_contextvars sets every key's variable on one line:
    watching only the user, both binds of it are seen, though the same line
    also sets a request id that nobody watches."""
    import contextvars

    import structlog

    def bind_twice():
        for user in ("alice", "bob"):
            structlog.contextvars.bind_contextvars(request_id="r1", user=user)

    tracer = Tracer(TraceRecorder(), variables=["structlog_user"])
    with tracer:
        contextvars.copy_context().run(bind_twice)
    assert [(e.op, e.var.name, e.value) for e in tracer.events] == [
        ("set", "structlog_user", "alice"),
        ("set", "structlog_user", "bob"),
    ]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's code objects carry no qualified name")
def test_a_site_names_its_function_as_python_qualifies_it():
    import contextvars

    var = contextvars.ContextVar("named")

    def nested():
        var.set("x")

    tracer = Tracer(TraceRecorder())
    with tracer:
        contextvars.copy_context().run(nested)
    assert [e.site.function for e in tracer.events] == [nested.__qualname__]


def test_a_library_file_belongs_to_its_top_level_package():
    """Which library set a variable decides the snapshot reads it owes."""
    import starlette.middleware.base

    tracer = Tracer(TraceRecorder())
    assert tracer.owner(starlette.middleware.base.__file__) == "starlette"
    assert tracer.owner(__file__) == "app"


def test_a_library_file_reached_through_a_symlink_is_still_the_librarys(tmp_path):
    """A package linked into another directory (as some installers do) is
    the library's own code, not the app's."""
    import starlette.middleware

    (tmp_path / "linked").symlink_to(Path(starlette.middleware.__file__).parent)
    assert Tracer(TraceRecorder()).owner(str(tmp_path / "linked" / "base.py")) == "starlette"
