"""What a trace found: values lost, values leaked, resets that raised; for
each, the boundary that separated the set from the read, and the fix.

A get during request R is `lost` when the latest set of that variable by
request R (not reset since) holds another value: the reading context never
received that set.  It is a `leak` when the value it returns was set only
by another request.  A reset that raised is a `reset-error`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ctxlab.probe import ContextMark
from ctxlab.tracer import Event, Origin, Site
from ctxlab.values import UNSET


@dataclass
class Finding:
    kind: str  # lost | leak | reset-error
    read: Event  # for reset-error: the reset
    set: Event | None  # the set whose value was lost or leaked; the token's set
    boundary: str
    fix: str
    scenario: str | None  # a bundled scenario showing the same pitfall
    requests: list[int | None] = field(default_factory=list)  # every request it happened in

    @property
    def var(self) -> str:
        return self.read.var.name

    @property
    def request(self) -> int | None:
        return self.read.request


def analyse(
    events: list[Event],
    origins: dict[Any, Origin],
    label: Callable[[Any], str],
    where: Callable[[Site], str],
    is_app: Callable[[str], bool],
) -> list[Finding]:
    """Every finding in `events` (in the order they happened).

    `label` names a task, thread or context mark (T3, C2); `where` names a
    site as `file:line`; `is_app` tells the app's own files.
    """
    boundaries = Boundaries(origins, label, where, is_app)
    history: dict[Any, _History] = {}
    findings: dict[tuple, Finding] = {}
    requests: dict[tuple, set[int | None]] = {}  # the requests each finding lists, to look up

    def add(kind: str, read: Event, set_: Event | None) -> None:
        # The same pitfall in every request is one finding, listing them;
        # its words are found once.
        set_site = (set_.site.path, set_.site.line) if set_ else None
        key = (kind, read.var, read.site.path, read.site.line, set_site)
        if key not in findings:
            findings[key] = getattr(boundaries, kind.replace("-", "_"))(read, set_)
            requests[key] = set()
        if read.request not in requests[key]:
            requests[key].add(read.request)
            findings[key].requests.append(read.request)

    for event in events:
        var = history.setdefault(event.var, _History())
        if event.op == "set":
            var.add(event)
        elif event.op == "reset":
            if event.raised:
                add("reset-error", event, event.token_set)
            elif event.token_set is not None:
                var.reset.add(event.token_set.seq)
        elif event.request is not None:
            judged = var.judge(event)
            if judged is not None:
                add(*judged)
    return list(findings.values())


class _History:
    """The sets of one variable so far, indexed for judging each get."""

    def __init__(self) -> None:
        self.by_request: dict[int | None, list[Event]] = {}
        self.by_value: dict[Any, Event] = {}  # the latest set of each value
        self.values_by_request: dict[int | None, set[Any]] = {}
        self.reset: set[int] = set()  # seq of sets whose token was reset

    def add(self, set_: Event) -> None:
        key = _key(set_.value)
        self.by_request.setdefault(set_.request, []).append(set_)
        self.values_by_request.setdefault(set_.request, set()).add(key)
        self.by_value[key] = set_

    def judge(self, get: Event) -> tuple[str, Event, Event] | None:
        """(kind, the get, the set it concerns) when the get is a finding."""
        key = _key(get.value)
        if get.value != UNSET and key not in self.values_by_request.get(get.request, ()):
            producer = self.by_value.get(key)
            if producer is not None and producer.request is not None:
                return "leak", get, producer
        open_set = None
        for set_ in reversed(self.by_request.get(get.request, ())):
            if set_.seq not in self.reset:
                open_set = set_
                break
        # Lost means the reading context never received the set: a get in the
        # setter's own context that sees another value was changed by code
        # the hooks cannot see (a set made from C), not by a boundary.
        if open_set is not None and open_set.value != get.value and open_set.mark is not get.mark:
            return "lost", get, open_set
        return None


_PLAIN = (str, int, float, bool, type(None))


def _key(value: Any) -> Any:
    """Equal report values, equal keys (a dict's keys in any order)."""
    return (type(value), value) if type(value) in _PLAIN else json.dumps(value, sort_keys=True)


def _chain(mark: ContextMark | None) -> list[ContextMark]:
    chain = []
    while mark is not None:
        chain.append(mark)
        mark = mark.parent
    return chain


def _path_has(site: Site, *parts: str) -> bool:
    return "/".join(parts) in site.path.replace(os.sep, "/")


class Boundaries:
    """Plain words for what separated a set from a read, with the fix."""

    def __init__(self, origins: dict[Any, Origin], label: Callable[[Any], str], where: Callable[[Site], str],
                 is_app: Callable[[str], bool]) -> None:  # fmt: skip
        self.origins, self.label, self.where, self.is_app = origins, label, where, is_app

    # -- who is who ---------------------------------------------------------------
    def who(self, event: Event) -> str:
        return self.label(event.task) if event.task is not None else f"thread {event.thread}"

    def _is_thread(self, mark: ContextMark) -> bool:
        return isinstance(mark.owner, threading.Thread)

    def _own_thread_context(self, event: Event) -> bool:
        """A thread running in its own context, not in a copy of a task's."""
        return event.task is None and event.mark.parent is None and self._is_thread(event.mark)

    def _created(self, task: Any) -> str:
        """`started by BaseHTTPMiddleware's call_next in Audit.dispatch (app.py:30)`."""
        origin = self.origins.get(task)
        if origin is None:
            return "created by code ctxlab did not see"
        app = next((site for site in origin.stack if self.is_app(site.path)), None)
        in_app = f" in {app.function} ({self.where(app)})" if app else ""
        for site in origin.stack:
            if _path_has(site, "starlette", "middleware", "base.py"):
                return f"started by BaseHTTPMiddleware's call_next (starlette/middleware/base.py){in_app}"
        if origin.request is None:
            return f"created at startup{in_app}"
        return f"created{in_app}" if app else "created by a library"

    def _copy_kind(self, event: Event) -> tuple[str, str | None]:
        """A thread running in a copy: who made the copy, which scenario shows it."""
        if event.thread.startswith("AnyIO worker"):
            return "run_in_threadpool (FastAPI runs `def` dependencies and endpoints there)", "sync-dependency"
        return "asyncio.to_thread or copy_context().run", "to-thread"

    # -- the findings -----------------------------------------------------------------
    def lost(self, get: Event, set_: Event) -> Finding:
        reader, setter = _chain(get.mark), _chain(set_.mark)
        who, setter_who = self.who(get), self.who(set_)
        scenario = "task-changes-stay-in-task"
        if get.mark in setter:  # the set ran in a copy made below the reader
            # The first task copied below the reader (a callback run in a
            # task's context may have marked a copy in between).
            below = setter[: setter.index(get.mark)]
            copy = next((m for m in reversed(below) if not self._is_thread(m)), below[0])
            if set_.task is None:
                made_by, scenario = self._copy_kind(set_)
                boundary = (f"{set_.site.function} ({self.where(set_.site)}) ran in a thread-pool copy of "
                            f"{self.label(get.mark)} made by {made_by}; a set in a copy never comes back")  # fmt: skip
                fix = ("Make the function that sets it `async def`, so it runs in the request's task, or return "
                       "the value and set it in async code.")  # fmt: skip
            else:
                created = self._created(copy.owner)
                boundary = (f"{self.label(copy.owner)} was {created}; a task's context is a copy, so its set "
                            f"never reaches {who}")  # fmt: skip
                if "call_next" in created:
                    scenario = "dependency-audit"
                    fix = ("Pass the value on request.state, set it before call_next (in this middleware or one "
                           "outside it), or rewrite the middleware as pure ASGI middleware, which shares the "
                           "endpoint's task.")  # fmt: skip
                else:
                    fix = "Return the value from the task (or await it and set it in the caller); a task's sets stay in the task."
        elif set_.mark in reader:  # the reader's context was copied before the set
            below = reader[: reader.index(set_.mark)]
            copy = next((m for m in reversed(below) if not self._is_thread(m)), below[0])
            boundary = (f"{self.label(copy.owner) if not self._is_thread(copy) else 'the thread'} runs in a copy "
                        f"of {self.label(set_.mark)} taken before {setter_who} set the value")  # fmt: skip
            scenario = "task-snapshot-time"
            fix = "Create the task (or take the copy) after the value is set, or pass the value to it explicitly."
        elif self._own_thread_context(get):
            boundary = (f"the executor job ran in the worker thread's own context (no copy_context), so it sees "
                        f"nothing {setter_who} set")  # fmt: skip
            scenario = "executor-no-copy"
            fix = ("Submit the job as `loop.run_in_executor(pool, contextvars.copy_context().run, job)`, or use "
                   "asyncio.to_thread / run_in_threadpool, which copy the context.")  # fmt: skip
        elif get.task is not None and get.task in self.origins and self.origins[get.task].request is None:
            boundary = (f"{who} was {self._created(get.task)}, before request {get.request} set the value; it runs "
                        f"in a copy of the startup context, which never receives a request's sets")  # fmt: skip
            scenario = "task-snapshot-time"
            fix = ("Pass the value along with the work (put it on the queue with the item) and set it in the "
                   "consumer for each item.")  # fmt: skip
        else:
            boundary = (f"{who} ({self.label(get.mark)}) and {setter_who} ({self.label(set_.mark)}) run in separate "
                        f"contexts; neither receives the other's sets")  # fmt: skip
            fix = "Set the value where both inherit it (before either task starts), or pass it explicitly."
        return Finding("lost", get, set_, boundary, fix, scenario)

    def leak(self, get: Event, set_: Event) -> Finding:
        reader = _chain(get.mark)
        who = self.who(get)
        previous = f"request {set_.request}"
        if get.task is None and set_.mark is get.mark and self._is_thread(get.mark):
            # With 3.14's thread_inherit_context the thread's context is a
            # copy of the one that started it, and kept as long as the thread.
            context = (
                "the worker thread's own context"
                if get.mark.parent is None
                else f"the worker thread's context (a copy of {self.label(get.mark.parent)}, made as it started)"
            )
            boundary = (f"the executor job ran in {context} (no copy_context), which still "
                        f"holds what {previous} set there")  # fmt: skip
            return Finding("leak", get, set_, boundary,
                           "Run each job in a copy (`loop.run_in_executor(pool, contextvars.copy_context().run, job)`), "
                           "or reset the value in a `finally` in the job.", "executor-thread-leak")  # fmt: skip
        if set_.mark in reader and get.mark is not set_.mark:
            # The task that started in the copy (a callback running in the
            # old context may sit in between).
            below = reader[: reader.index(set_.mark)]
            started = next((m.owner for m in reversed(below) if m.owner in self.origins), None)
            origin = self.origins.get(started)
            if origin is not None and any(_path_has(s, "uvicorn", "protocols") for s in origin.stack):
                boundary = (
                    f"the previous request on this keep-alive connection: the server started "
                    f"{self.label(started)} in a copy of {previous}'s context {self.label(set_.mark)}"
                )
                return Finding(
                    "leak", get, set_, boundary,
                    "Reset the value in a `finally` at the end of each request (token = var.set(...); "
                    "try: ... finally: var.reset(token)), or run uvicorn with --reset-contextvars "
                    "where it has it.",
                    "keepalive-large-body-leak",
                )  # fmt: skip
            boundary = f"{who} runs in a copy of {self.label(set_.mark)}, where {previous} set the value"
        elif set_.mark is get.mark:
            boundary = (f"{who} serves every request in one context ({self.label(get.mark)}), so what {previous} "
                        f"set there is still there")  # fmt: skip
        else:
            boundary = f"{who} runs in a context that holds what {previous} set ({self.label(set_.mark)})"
        return Finding("leak", get, set_, boundary,
                       "Reset the value when the request's work ends (token = var.set(...); try: ... finally: "
                       "var.reset(token)), or start each unit of work in a fresh copy of the request's context.",
                       "task-snapshot-time" if set_.mark is get.mark else None)  # fmt: skip

    def reset_error(self, reset: Event, set_: Event | None) -> Finding:
        if reset.raised and reset.raised.startswith("RuntimeError"):
            return Finding("reset-error", reset, set_, "the token had already been used by an earlier reset",
                           "Reset each token once, in the `finally` that matches its set.", "reset-twice")  # fmt: skip
        if reset.raised and "different ContextVar" in reset.raised:
            # The hooks never see the token itself, so the set that made it
            # (another variable's) is not known; this variable's sets are not it.
            return Finding("reset-error", reset, None, f"the token came from another ContextVar's set, not {reset.var.name}'s",
                           "Reset each ContextVar with the token its own set returned.", None)  # fmt: skip
        if set_ is None:
            boundary = f"the token was created in another context than {self.label(reset.mark)}"
            return Finding(
                "reset-error",
                reset,
                set_,
                boundary,
                "Reset a token in the context that made it.",
                "reset-wrong-context",
            )
        made, used = self.label(set_.mark), self.label(reset.mark)
        if self._is_thread(set_.mark) and self._is_thread(reset.mark):
            boundary = (f"{set_.site.function} set the value in {made} and reset it in {used}: two different "
                        f"thread-pool copies (FastAPI runs a `def` yield dependency's setup and teardown "
                        f"separately in run_in_threadpool)")  # fmt: skip
            return Finding("reset-error", reset, set_, boundary,
                           "Make the yield dependency `async def`, so setup and teardown run in the request's "
                           "task; or do not reset: a copy is thrown away anyway.", "yield-dependency-reset")  # fmt: skip
        boundary = f"the token was created in {made} ({self.who(set_)}) and reset in {used} ({self.who(reset)})"
        return Finding(
            "reset-error",
            reset,
            set_,
            boundary,
            "Reset a token in the context (task) that made it.",
            "reset-wrong-context",
        )
