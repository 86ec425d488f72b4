"""How a trace's findings are judged and worded, on hand-made events: each
case builds the contexts, tasks and threads a real app would have (who
copied whose context, who set and who read), so the expected boundary
follows from the case itself.  The real apps' traces are in test_trace.py."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from itertools import count

from ctxlab.findings import analyse
from ctxlab.probe import ContextMark
from ctxlab.tracer import Event, Origin, Site

USER = ContextVar("user")
APP = Site("/srv/app.py", 10, "handler")


class Task:
    """Stands for an asyncio task: findings only compare and label it."""

    def __init__(self, name: str) -> None:
        self.name = name


class Case:
    """The events of one imagined run, labelled T1/C1 as a trace labels them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.origins: dict[object, Origin] = {}
        self.names: dict[int, str] = {}
        self.seq = count(1)
        self.contexts = count(1)

    def context(self, owner: object, parent: ContextMark | None = None) -> ContextMark:
        mark = ContextMark(owner, parent)
        self.names[id(mark)] = f"C{next(self.contexts)}"
        return mark

    def task(self, name: str, request: int | None = 1) -> Task:
        task = Task(name)
        self.names[id(task)] = name
        self.origins[task] = Origin(request, [APP])
        return task

    def event(self, op: str, value: object, mark: ContextMark, request: int | None, line: int, **more) -> Event:
        owner = mark.owner
        task = owner if isinstance(owner, Task) else None
        thread = owner.name if isinstance(owner, threading.Thread) else "MainThread"
        site = Site("/srv/app.py", line, "handler")
        event = Event(next(self.seq), request, op, USER, value, site, site, task, mark, thread, **more)
        self.events.append(event)
        return event

    def findings(self) -> list:
        def label(item: object) -> str:
            return self.names.get(id(item)) or getattr(item, "name", "?")

        return analyse(self.events, self.origins, label, lambda s: f"app.py:{s.line}", lambda p: p == APP.path)


def only(case: Case, kind: str):
    (finding,) = case.findings()
    assert finding.kind == kind
    return finding


def test_a_task_copied_before_the_set_never_sees_it():
    """T1 starts T2 (a copy of C1), then sets: T2's read misses the value."""
    case = Case()
    t1 = case.task("T1")
    request = case.context(t1)
    child = case.context(case.task("T2"), parent=request)
    case.event("set", "ada", request, 1, 20)
    case.event("get", "<unset>", child, 1, 30)
    finding = only(case, "lost")
    assert finding.boundary == "T2 runs in a copy of C1 taken before T1 set the value"
    assert finding.scenario == "task-snapshot-time"


def test_a_thread_copied_before_the_set_never_sees_it():
    """asyncio.to_thread copied C1 before T1 set: the thread reads nothing."""
    case = Case()
    request = case.context(case.task("T1"))
    copy = case.context(threading.Thread(name="asyncio_0"), parent=request)
    case.event("set", "ada", request, 1, 20)
    case.event("get", "<unset>", copy, 1, 30)
    assert only(case, "lost").boundary == "the thread runs in a copy of C1 taken before T1 set the value"


def test_a_set_in_a_task_started_from_a_copy_is_named_by_that_task():
    """A callback ran in a thread's copy of C1 and started T2 there: T2 is
    the one whose set never comes back, not the thread in between."""
    case = Case()
    request = case.context(case.task("T1"))
    callback = case.context(threading.Thread(name="worker"), parent=request)
    t2 = case.task("T2")
    case.origins[t2] = Origin(1, [Site("/srv/app.py", 44, "start_job")])
    case.event("set", "ada", case.context(t2, parent=callback), 1, 50)
    case.event("get", "<unset>", request, 1, 60)
    finding = only(case, "lost")
    assert finding.boundary == (
        "T2 was created in start_job (app.py:44); a task's context is a copy, so its set never reaches T1"
    )


def test_two_tasks_in_separate_contexts_are_named_as_such():
    """T2 (created during the request, in a context of its own) sets; T1 reads."""
    case = Case()
    t1_context = case.context(case.task("T1"))
    case.event("set", "ada", case.context(case.task("T2")), 1, 20)
    case.event("get", "<unset>", t1_context, 1, 30)
    finding = only(case, "lost")
    assert finding.boundary == "T1 (C1) and T2 (C2) run in separate contexts; neither receives the other's sets"
    assert finding.scenario == "task-changes-stay-in-task"


def test_a_task_serving_every_request_in_one_context_leaks():
    """A consumer task reads in the same context where request 1 set."""
    case = Case()
    consumer = case.context(case.task("T1", request=None))
    case.event("set", "ada", consumer, 1, 20)
    case.event("get", "ada", consumer, 2, 30)
    finding = only(case, "leak")
    assert finding.boundary == "T1 serves every request in one context (C1), so what request 1 set there is still there"
    assert finding.scenario == "task-snapshot-time"


def test_a_task_in_a_context_holding_another_requests_value_leaks():
    """Request 1's T1 set in C1; T2 of request 2 runs in C2, which holds it
    (no copy ctxlab saw: C2 is no child of C1)."""
    case = Case()
    case.event("set", "ada", case.context(case.task("T1")), 1, 20)
    case.event("get", "ada", case.context(case.task("T2", request=2)), 2, 30)
    finding = only(case, "leak")
    assert finding.boundary == "T2 runs in a context that holds what request 1 set (C1)"
    assert finding.scenario is None


def test_a_thread_copied_from_another_requests_context_leaks():
    """A thread runs in a copy of C1, where request 1 set, during request 2."""
    case = Case()
    request_1 = case.context(case.task("T1"))
    case.event("set", "ada", request_1, 1, 20)
    case.event("get", "ada", case.context(threading.Thread(name="worker"), parent=request_1), 2, 30)
    assert only(case, "leak").boundary == "thread worker runs in a copy of C1, where request 1 set the value"


def test_a_copy_taken_between_two_sets_misses_the_later_one():
    """T1 sets "a", starts T2 (a copy), sets "b": T2 reads "a", and the set
    it never received is the later one, "b"."""
    case = Case()
    request = case.context(case.task("T1"))
    case.event("set", "a", request, 1, 20)
    child = case.context(case.task("T2"), parent=request)
    later = case.event("set", "b", request, 1, 21)
    case.event("get", "a", child, 1, 30)
    finding = only(case, "lost")
    assert finding.set is later


def test_a_reset_whose_token_no_set_made_is_named_by_its_context():
    """The reset raised ValueError and no set of this trace made its token."""
    case = Case()
    context = case.context(case.task("T1"))
    case.event("reset", "<unset>", context, 1, 20, raised="ValueError: <Token> was created in a different Context")
    finding = only(case, "reset-error")
    assert (finding.set, finding.boundary) == (None, "the token was created in another context than C1")
    assert finding.scenario == "reset-wrong-context"


def test_one_read_missing_two_different_sets_is_two_findings():
    """Request 1 sets at line 20, request 2 at line 21; each then reads in
    a copy taken before its set, at the same line 30: two pitfalls."""
    case = Case()
    for request, line in ((1, 20), (2, 21)):
        context = case.context(case.task(f"T{request}", request=request))
        child = case.context(case.task(f"T{request}b", request=request), parent=context)
        case.event("set", f"user-{request}", context, request, line)
        case.event("get", "<unset>", child, request, 30)
    findings = case.findings()
    assert [(f.kind, f.set.site.line, f.requests) for f in findings] == [("lost", 20, [1]), ("lost", 21, [2])]


def test_a_thread_in_a_copy_of_another_context_is_no_executor_without_copy():
    """The thread runs in a copy of C2 (some task's), which never had
    request 1's set in C1: separate contexts, not a job run without a copy."""
    case = Case()
    request = case.context(case.task("T1"))
    other = case.context(case.task("T2"))
    case.event("set", "ada", request, 1, 20)
    case.event("get", "<unset>", case.context(threading.Thread(name="worker"), parent=other), 1, 30)
    finding = only(case, "lost")
    assert finding.boundary == (
        "thread worker (C3) and T1 (C1) run in separate contexts; neither receives the other's sets"
    )


def test_a_token_reset_twice_is_named_as_such():
    """The second reset of one token raised RuntimeError (the token's own set is known)."""
    case = Case()
    context = case.context(case.task("T1"))
    set_ = case.event("set", "ada", context, 1, 20)
    case.event("reset", "<unset>", context, 1, 21, token_set=set_)
    case.event(
        "reset", "<unset>", context, 1, 22, token_set=set_, raised="RuntimeError: <Token> has already been used once"
    )
    finding = only(case, "reset-error")
    assert (finding.read.site.line, finding.set) == (22, set_)
    assert (finding.boundary, finding.scenario) == (
        "the token had already been used by an earlier reset",
        "reset-twice",
    )


def test_a_set_reset_before_a_read_is_no_loss():
    """T1 sets, then resets with that set's token (the variable is unset
    again), then T2 in a copy reads it unset: nothing was lost."""
    case = Case()
    request = case.context(case.task("T1"))
    set_ = case.event("set", "ada", request, 1, 20)
    case.event("reset", "<unset>", request, 1, 21, token_set=set_)
    case.event("get", "<unset>", case.context(case.task("T2"), parent=request), 1, 30)
    assert case.findings() == []


def test_a_task_started_in_a_threads_copy_is_named_not_the_thread():
    """A thread copied C1 before T1 set, and started T2 there: T2 reads
    nothing, and the copy it runs in is T2's (the thread is in between)."""
    case = Case()
    request = case.context(case.task("T1"))
    thread = case.context(threading.Thread(name="worker"), parent=request)
    case.event("set", "ada", request, 1, 20)
    case.event("get", "<unset>", case.context(case.task("T2"), parent=thread), 1, 30)
    assert only(case, "lost").boundary == "T2 runs in a copy of C1 taken before T1 set the value"


def test_a_value_set_at_startup_is_no_leak():
    """Startup (no request) set the value every request then reads: it
    belongs to no other request, so nothing leaked."""
    case = Case()
    startup = case.context(case.task("T1", request=None))
    case.event("set", "prod", startup, None, 5)
    case.event("get", "prod", case.context(case.task("T2"), parent=startup), 1, 30)
    assert case.findings() == []


def test_a_token_made_in_a_thread_and_reset_in_a_task_names_both():
    """A thread's copy set (made the token); T1 reset it in its own context."""
    case = Case()
    request = case.context(case.task("T1"))
    set_ = case.event("set", "ada", case.context(threading.Thread(name="worker"), parent=request), 1, 20)
    case.event(
        "reset",
        "<unset>",
        request,
        1,
        21,
        token_set=set_,
        raised="ValueError: <Token> was created in a different Context",
    )
    finding = only(case, "reset-error")
    assert finding.boundary == "the token was created in C2 (thread worker) and reset in C1 (T1)"
    assert finding.scenario == "reset-wrong-context"


def test_a_value_equal_to_the_requests_own_set_is_no_leak_in_any_key_order():
    """Request 2 set {"b": 2, "a": 1} itself; reading {"a": 1, "b": 2} (what
    request 1 set, an equal dict) shows nothing another request set."""
    case = Case()
    case.event("set", {"a": 1, "b": 2}, case.context(case.task("T1")), 1, 20)
    context = case.context(case.task("T2", request=2))
    case.event("set", {"b": 2, "a": 1}, context, 2, 20)
    case.event("get", {"a": 1, "b": 2}, context, 2, 30)
    assert case.findings() == []
