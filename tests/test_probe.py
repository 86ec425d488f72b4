"""The recorder: labels, unset vs None vs raised, no mixing between requests."""

import asyncio
import gc
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context

import pytest
from conftest import run_app, seen

from ctxlab.probe import UNSET, Recorder, activate, attempt, jsonable, note, probe
from ctxlab.scenario import ClientRequest, per_request

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


def _nested(depth: int) -> list:
    """A list inside a list, `depth` deep: json.dumps and repr recurse."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


class _Refuses:
    """A value whose repr and str raise, as an unbound proxy's do."""

    def __repr__(self):
        raise RuntimeError("working outside of a context")

    __str__ = __repr__


@pytest.mark.parametrize(
    "value, shown",
    [
        (10**5000, "<int of 16610 bits>"),  # Python refuses to print it (past 4,300 digits)
        (-(10**5000), "<int of 16610 bits>"),
        (10**1000 - 1, 10**1000 - 1),
        (10**1000, "<int of 3322 bits>"),
        (-(10**1000) + 1, -(10**1000) + 1),
        (-(10**1000), "<int of 3322 bits>"),
        (float("nan"), "<float nan>"),  # no JSON number
        (float("-inf"), "<float -inf>"),
        (1.5, 1.5),
        ({"a": float("inf")}, "{'a': inf}"),
        ([10**5000], "<list whose repr() raised ValueError>"),
        (_Refuses(), "<_Refuses whose repr() raised RuntimeError>"),
        (ValueError(_Refuses()), {"raised": "ValueError", "message": "<ValueError whose str() raised RuntimeError>"}),
        (_nested(100_000), "<list whose repr() raised RecursionError>"),
    ],
    ids=[
        "huge",
        "huge-negative",
        "longest",
        "shortest-cut",
        "longest-negative",
        "shortest-cut-negative",
        "nan",
        "-inf",
        "float",
        "inf-inside",
        "huge-inside",
        "refuses",
        "error",
        "too-deep",
    ],  # fmt: skip
)
def test_jsonable_shows_what_json_or_repr_cannot_and_never_raises(value, shown):
    """It runs inside the app: a value that cannot be shown must not fail the
    app's own set or get, and the report stays strict JSON."""
    assert jsonable(value) == shown
    json.dumps(jsonable(value), allow_nan=False)


def test_probe_records_what_json_cannot_hold_as_jsonable_shows_it(asgi_app):
    """probe() skips jsonable for strings and bools only: an int Python
    cannot print and a NaN reach the report as what they are."""

    async def handler(scope):
        var.set(10**5000)
        probe("huge", var)
        var.set(float("nan"))
        probe("nan", var)

    result = run_app(lambda: asgi_app(handler), {"huge": {"var": None}, "nan": {"var": None}})
    assert [o.observed for o in result.observations] == ["<int of 16610 bits>", "<float nan>"]


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


@pytest.mark.skipif(sys.version_info < (3, 11), reason="create_task(context=...) is new in 3.11")
def test_a_task_given_a_context_runs_in_that_context_itself(asgi_app):
    """The recorder's task factory must not turn the context asyncio was
    given into a copy: a set inside the task is visible in that context."""

    async def sets():
        var.set("set in the task")

    async def handler(scope):
        context = copy_context()
        await asyncio.get_running_loop().create_task(sets(), context=context)
        note("after", "value", context.get(var, "not there"))
        # Created from inside the very context it is given: asyncio allows it
        # (the task runs once that context is left), so the recorder must too.
        entered = copy_context()
        task = entered.run(asyncio.get_running_loop().create_task, sets(), context=entered)
        await task
        note("entered", "value", entered.get(var, "not there"))

    expect = {"after": {"value": "set in the task"}, "entered": {"value": "set in the task"}}
    result = run_app(lambda: asgi_app(handler), expect)
    assert result.status == "pass", result.error


def test_a_task_outliving_its_request_still_belongs_to_it(asgi_app):
    """Only a thread with no request of its own is lent the one in flight:
    a task knows which request started it."""
    wake = asyncio.Event()
    leftovers = []

    async def leftover():
        await wake.wait()
        probe("leftover", var)

    async def handler(scope):
        number = int(dict(scope["headers"])[b"x-ctxlab-request"])
        if number == 1:
            leftovers.append(asyncio.get_running_loop().create_task(leftover()))
            return
        wake.set()
        await asyncio.sleep(0.01)  # the leftover task probes while request 2 is in flight

    result = run_app(lambda: asgi_app(handler), {"leftover": {"var": UNSET}}, requests=(ClientRequest(),) * 2)
    assert [(o.probe, o.request) for o in result.observations] == [("leftover", 1)]


def test_httpx_asgi_transport_used_bare_runs_every_request_in_the_callers_task(asgi_app):
    """Without a task per request the app runs inline in the runner's own
    task (httpx.ASGITransport awaits it directly): one task, one context."""

    async def handler(scope):
        probe("inline", var)
        var.set("left behind")

    result = run_app(
        lambda: asgi_app(handler), {"inline": {"var": per_request(UNSET, "left behind")}},
        requests=(ClientRequest(),) * 2, task_per_request=False,
    )  # fmt: skip
    assert result.status == "pass", result.error
    first, second = result.observations
    assert (first.task, first.context) == (second.task, second.context) != (None, None)


@pytest.mark.parametrize("live", [False, True], ids=["run", "serve"])
def test_threads_recording_at_once_lose_nothing_and_number_in_order(live):
    """Probes take no lock (ctxlab.probe.Recorder): threads switching as
    often as the interpreter allows still leave every record, numbered
    1..N once each, each thread's in its own order, in its own context;
    `serve`'s live records (on_record) carry the numbers a run's have."""
    threads, calls = 8, 500
    passed = []
    recorder = Recorder(on_record=passed.append if live else None)
    together = threading.Barrier(threads)  # all of them running at once, none reused

    def work(n):
        together.wait()
        for i in range(calls):
            var.set((n, i))
            probe("step", var)

    previous, interval = activate(recorder), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="probing") as pool:
            list(pool.map(lambda n: copy_context().run(work, n), range(threads)))
    finally:
        sys.setswitchinterval(interval)
        activate(previous)
    records = recorder.records
    assert [r.seq for r in records] == list(range(1, threads * calls + 1))
    by_thread = {}
    for record in records:
        by_thread.setdefault(record.thread, []).append(record)
    assert sorted(by_thread) == [f"probing_{n}" for n in range(threads)]
    for name, mine in by_thread.items():
        (n,) = {r.value[0] for r in mine}
        assert [r.value for r in mine] == [[n, i] for i in range(calls)]  # a tuple reads back as JSON's list
        assert {(r.task, r.context.owner.name) for r in mine} == {(None, name)}
    if live:
        assert sorted(passed, key=lambda r: r.seq) == records


@pytest.mark.parametrize("collecting", [True, False])
def test_reading_the_records_leaves_the_garbage_collector_as_it_was(collecting):
    """`Recorder.records` pauses the collector while it builds the records:
    afterwards it is on or off as before."""
    recorder = Recorder()
    previous, was = activate(recorder), gc.isenabled()
    try:
        probe("here", var_with_default)
        (gc.enable if collecting else gc.disable)()
        (record,) = recorder.records
        assert (record.probe, record.var, record.value) == ("here", "var_with_default", None)
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()
        activate(previous)
