"""The recorder: labels, unset vs None vs raised, no mixing between requests."""

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context

from conftest import run_app, seen

from ctxlab.probe import UNSET, Recorder, activate, attempt, jsonable, note, probe
from ctxlab.scenario import ClientRequest

var: ContextVar = ContextVar("var")
var_with_default: ContextVar = ContextVar("var_with_default", default=None)


def test_unset_none_and_value_are_distinct(asgi_app):
    async def handler(scope):
        probe("before", var, var_with_default)
        var.set(None)
        probe("after", var)

    expect = {"before": {"var": UNSET, "var_with_default": None}, "after": {"var": None}}
    result = run_app(lambda: asgi_app(handler), expect)
    assert result.status == "pass", result
    assert [o.observed for o in result.observations] == ["<unset>", None, None]


def test_raised_exception_is_recorded_with_type_and_message(asgi_app):
    async def handler(scope):
        token = var.set(1)
        var.reset(token)
        attempt("reset.again", "reset", lambda: var.reset(token))

    result = run_app(lambda: asgi_app(handler), {"reset.again": {"reset": None}})
    (observation,) = seen(result, "reset.again")
    assert observation.observed["raised"] == "RuntimeError"
    assert "has already been used once" in observation.observed["message"]
    assert "0x" not in observation.observed["message"]  # addresses dropped: runs compare
    assert result.status == "drift"  # expected None, saw an exception


def test_values_are_snapshots_taken_at_the_probe(asgi_app):
    async def handler(scope):
        value = {"n": 1}
        var.set(value)
        probe("first", var)
        value["n"] = 2
        probe("second", var)

    result = run_app(lambda: asgi_app(handler), {"first": {"var": {"n": 1}}, "second": {"var": {"n": 2}}})
    assert result.status == "pass"


def test_jsonable_falls_back_to_repr_without_addresses():
    assert jsonable(object()).startswith("<object object")
    assert "0x" not in jsonable(object())
    assert jsonable((1, "a")) == [1, "a"]


def test_task_and_context_labels_follow_creation(asgi_app):
    async def child():
        probe("child", var)
        var.set("child")
        probe("child.after", var)

    async def handler(scope):
        var.set("parent")
        probe("parent", var)
        await asyncio.get_running_loop().create_task(child())
        probe("parent.after", var)

    expect = {
        "parent": {"var": "parent"},
        "child": {"var": "parent"},
        "child.after": {"var": "child"},
        "parent.after": {"var": "parent"},
    }
    result = run_app(lambda: asgi_app(handler), expect)
    assert result.status == "pass"
    rows = {o.probe: (o.task, o.parent_task, o.context) for o in result.observations}
    assert rows["parent"] == ("T1", None, "C1")
    assert rows["child"] == ("T2", "T1", "C2")
    assert rows["child.after"] == rows["child"]
    assert rows["parent.after"] == rows["parent"]


def test_thread_contexts_copy_or_own(asgi_app):
    pool = ThreadPoolExecutor(1, thread_name_prefix="pool")

    def job(label):
        probe(label, var)

    async def handler(scope):
        var.set("request")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, job, "own")
        await loop.run_in_executor(pool, copy_context().run, job, "copied")
        await loop.run_in_executor(pool, job, "own.again")

    # Python 3.14's thread_inherit_context starts the worker (on the first
    # submit) in a copy of the request's context: then "own" is that copy.
    inherits = bool(getattr(sys.flags, "thread_inherit_context", 0))
    own_value = "request" if inherits else UNSET
    expect = {"own": {"var": own_value}, "copied": {"var": "request"}, "own.again": {"var": own_value}}
    result = run_app(lambda: asgi_app(handler), expect)
    pool.shutdown()
    assert result.status == "pass"
    own, copied, again = result.observations
    assert own.thread == copied.thread == "pool_0"
    assert own.context == again.context  # the worker's own context persists
    assert copied.context != own.context
    assert copied.parent_context == "C1" and own.parent_context == ("C1" if inherits else None)
    assert {o.request for o in result.observations} == {1}  # the one request in flight


def test_concurrent_requests_never_mix(asgi_app):
    request_id: ContextVar = ContextVar("request_id")

    async def handler(scope):
        mine = dict(scope["headers"])[b"x-ctxlab-request"].decode()
        request_id.set(mine)
        for _ in range(3):
            await asyncio.sleep(0)
            probe("step", request_id)

    requests = 500
    result = run_app(
        lambda: asgi_app(handler),
        {"step": {"request_id": "any"}},
        requests=tuple(ClientRequest() for _ in range(requests)),
        concurrent=True,
    )
    by_request = {}
    for o in result.observations:
        by_request.setdefault(o.request, set()).add((o.observed, o.task))
    assert len(by_request) == requests
    for number, values in by_request.items():
        assert values == {(str(number), f"T{number}")}


def test_probes_outside_a_run_record_nothing():
    recorder = Recorder()
    previous = activate(recorder)
    activate(previous)
    probe("nowhere", var)
    note("nowhere", "x", 1)
    assert attempt("nowhere", "x", lambda: 2) == 2
    assert recorder.records == []
