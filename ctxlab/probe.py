"""The recorder: who saw which value of which variable, and where.

A probe call records, per variable, the value seen (or that it was unset),
with the task, context and thread it ran in and the request it belongs to.
Everything here is careful not to disturb what it measures: the recorder's
own bookkeeping lives in private ContextVars that no scenario reads, and the
task factory creates exactly the task asyncio would have created.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from ctxlab.values import PLAIN, UNSET, jsonable, raised

__all__ = ["UNSET", "attempt", "note", "probe", "raised"]


class ContextMark:
    """Stored in a context to recognise that context object later.

    There is no API for "the current Context object", so each context we
    meet gets a mark in a private variable.  A copy inherits the mark, so a
    mark also names its owner (the task or thread that runs in the marked
    context): a probe that finds a mark owned by someone else is running in
    a copy, and marks that copy anew, remembering where it was copied from.

    A copy made inside the owner itself (`copy_context().run(...)` in a
    task) inherits a mark with the right owner, so the mark a task factory
    puts in a task's own context is its `home` mark: a probe that finds it
    checks that it really runs in the task's own context (see
    `Recorder.where`).  One level of such copies is told apart; a copy of
    that copy shares its label.

    `parent` is the mark of the context this one was copied from (None for
    a fresh context); `order` counts marks in creation order. Only the
    labeller (ctxlab.labels) reads them, to name contexts C1, C2, ...
    """

    __slots__ = ("owner", "parent", "order", "home")
    _counter = itertools.count()

    def __init__(self, owner: Any, parent: ContextMark | None, home: bool = False) -> None:
        self.owner = owner
        self.parent = parent
        self.order = next(self._counter)
        self.home = home


_running_loop = asyncio._get_running_loop  # None outside a loop, where get_running_loop raises
if sys.version_info >= (3, 12):
    # C code from 3.12; from 3.14 the current task is kept in the thread's
    # state, and the table below stays empty.
    _current_task = asyncio.current_task
else:  # Python code before: the table it reads costs a probe a tenth less
    _current_task = asyncio.tasks._current_tasks.get

_context_mark: contextvars.ContextVar[ContextMark] = contextvars.ContextVar("ctxlab.context")
_request_number: contextvars.ContextVar[int] = contextvars.ContextVar("ctxlab.request")
_here: contextvars.ContextVar[object] = contextvars.ContextVar("ctxlab.here")


def _is_current(context: contextvars.Context) -> bool:
    """Whether `context` is the one running now: a set in the running
    context shows in that Context object, and in no copy of it."""
    sentinel = object()
    token = _here.set(sentinel)
    try:
        return context.get(_here) is sentinel
    finally:
        _here.reset(token)


def _scheduled_context(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> contextvars.Context | None:
    """The context a 3.10 task runs in: it copies the current one and keeps
    the copy private, but its first step, scheduled on creation, carries it.
    None where the loop keeps no such queue (uvloop)."""
    ready = getattr(loop, "_ready", None)
    if ready:
        handle = ready[-1]
        if getattr(handle._callback, "__self__", None) is task:
            return handle._context
    return None


@dataclass
class TaskInfo:
    """What the task factory remembers of a task it created."""

    order: int  # creation order: labels T1, T2, ... follow it
    parent: asyncio.Task | None
    context: contextvars.Context | None = None  # the task's own context, where knowable


@dataclass(slots=True)
class Record:
    """One (probe, variable) reading, where and when it was made."""

    seq: int
    request: int | None
    probe: str
    var: str
    value: Any  # already jsonable
    task: asyncio.Task | None
    context: ContextMark
    thread: str


class Recorder:
    """Collects the records of one scenario run (one event loop).

    A probe runs inside the app's requests, so what it costs matters (the
    budget is 1 µs).  Each record is kept as a tuple of plain values:
    (place, request, probe, variable, value), where `place` numbers the
    context mark it was made under, which says the task too (`where()`
    returns a mark owned by the current task, or thread), and the thread
    it ran in.  It becomes a `Record` when read.  The garbage collector
    stops tracking a tuple of plain values at its first collection;
    records holding their task and mark were walked again by every
    collection, about a third of a probe's cost in a long run.

    Probes record from several threads at once (a pool's threads) with no
    lock: `list.append` and `dict.setdefault` happen whole under the GIL
    of the CPython builds ctxlab supports (a free-threaded build is not
    one of them).  A record's number is its place in `_rows`, as it was
    when a lock numbered them.  Only with `on_record` (serve) does a probe
    take a lock, to number each record as it passes it on.
    """

    def __init__(self, on_record: Callable[[Record], None] | None = None) -> None:
        self.tasks: dict[asyncio.Task, TaskInfo] = {}
        self.in_flight: set[int] = set()
        self.on_record = on_record
        self._rows: list[tuple] = []
        self._places: dict[ContextMark, tuple[int, str]] = {}  # mark -> (place, thread name)
        self._marks: dict[int, tuple[ContextMark, str]] = {}  # place -> (mark, thread name)
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._root: asyncio.Task | None = None

    @property
    def records(self) -> list[Record]:
        """Every record so far, in the order they were made."""
        rows, collecting = list(self._rows), gc.isenabled()
        # Thousands of new objects at once would start collections that
        # walk the whole heap (a run's tasks, coroutines, requests), and can
        # free nothing here.
        gc.disable()
        try:
            return [self._record(seq, row) for seq, row in enumerate(rows, 1)]
        finally:
            if collecting:
                gc.enable()

    def _place(self, mark: ContextMark) -> tuple[int, str]:
        """The number of a mark new to this recorder, and the name of the
        thread it is owned by or runs its owner.  A name is read once per
        mark: a thread renamed, or a loop run by another thread, after its
        first record here keeps the first name."""
        place = (id(mark), threading.current_thread().name)  # id: unique while the mark is kept here
        self._marks[place[0]] = (mark, place[1])
        return self._places.setdefault(mark, place)

    def _record(self, seq: int, row: tuple) -> Record:
        place, request, probe, var, value = row
        mark, thread = self._marks[place]
        task = None if isinstance(mark.owner, threading.Thread) else mark.owner
        return Record(seq, request, probe, var, value, task, mark, thread)

    def _pass_on(self, row: tuple) -> None:
        """Keep `row` and give its record to `on_record`, numbered."""
        with self._lock:
            self._rows.append(row)
            record = self._record(len(self._rows), row)
        self.on_record(record)

    # -- task tracking ---------------------------------------------------
    def task_factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        *,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task:
        """Create the task asyncio would, remembering its parent and context."""
        if context is None:
            context = contextvars.copy_context()
        parent = asyncio.current_task(loop)
        mark = ContextMark(owner=None, parent=context.get(_context_mark), home=True)
        try:
            context.run(_context_mark.set, mark)
        except RuntimeError:  # that context is running right now elsewhere
            mark = None
        if sys.version_info >= (3, 11):
            task = asyncio.Task(coro, loop=loop, context=context, **kwargs)
            home = context
        else:  # 3.10 tasks copy the current context: make it ours first
            task = context.run(asyncio.Task, coro, loop=loop, **kwargs)
            home = _scheduled_context(loop, task)
        if mark is not None:
            mark.owner = task
        if parent is self._root:
            parent = None
        self.tasks[task] = TaskInfo(next(self._order), parent, home)
        return task

    def set_root(self, task: asyncio.Task | None) -> None:
        """The runner's own task: requests it starts count as parentless."""
        self._root = task
        self.tasks.pop(task, None)

    # -- recording -------------------------------------------------------
    def where(self) -> tuple[asyncio.Task | None, ContextMark, int | None]:
        """The current task, context mark and request number of a record.

        Marks the current context first when it is new to us, or a copy of
        a context owned by another task or thread.  One probe call asks
        once and records several variables with the answer.
        """
        loop = _running_loop()
        task = _current_task(loop) if loop is not None else None  # None: a worker thread, no loop here
        owner = task if task is not None else threading.current_thread()
        mark = _context_mark.get(None)
        if mark is None or mark.owner is not owner or (mark.home and not self._at_home(task)):
            mark = ContextMark(owner=owner, parent=mark)
            _context_mark.set(mark)
        request = _request_number.get(None)
        if task is None and request not in self.in_flight and len(self.in_flight) == 1:
            # A pool thread running in its own context cannot say whom it
            # works for, or names the request that started the thread (3.14's
            # thread_inherit_context), long over; while only one request is
            # in flight it is that one.
            (request,) = self.in_flight
        return task, mark, request

    def _at_home(self, task: asyncio.Task | None) -> bool:
        """Whether `task` runs in its own context, not in a copy it made."""
        info = self.tasks.get(task) if task is not None else None
        return info is None or info.context is None or _is_current(info.context)


_active: Recorder | None = None


def activate(recorder: Recorder | None) -> Recorder | None:
    """Make `recorder` the one probes write to; returns the previous one."""
    global _active
    previous, _active = _active, recorder
    return previous


def probe(label: str, *variables: contextvars.ContextVar) -> None:
    """Record what each variable holds here (unset when it has no value)."""
    recorder = _active
    if recorder is None:
        return
    # The recorder's bookkeeping is done here rather than in a method of
    # its own: a Python call costs a tenth of a probe on 3.10.
    _, mark, request = recorder.where()
    place, _ = recorder._places.get(mark) or recorder._place(mark)
    for var in variables:
        try:
            value = var.get()
        except LookupError:
            value = UNSET
        if value is not None and type(value) not in PLAIN:  # the common values need no call
            value = jsonable(value)
        if recorder.on_record is None:
            recorder._rows.append((place, request, label, var.name, value))
        else:
            recorder._pass_on((place, request, label, var.name, value))


def note(label: str, name: str, value: Any) -> None:
    """Record a computed value (a count, a log line) under `name`."""
    probe(label, _Given(name, value))


class _Given:
    """A computed value, given to probe() as a variable that holds it."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def get(self) -> Any:
        return self.value


def attempt(label: str, name: str, action: Callable[[], Any]) -> Any:
    """Run `action` and record its result, or the exception it raised.

    The exception is recorded, not propagated: seeing it is the point.
    """
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - any exception is an observation
        note(label, name, exc)
        return None
    note(label, name, result)
    return result


def start_request(number: int) -> contextvars.Token:
    """Called by the runner's outermost layer as a request enters the app."""
    if _active is not None:
        _active.in_flight.add(number)
    return _request_number.set(number)


def end_request(number: int, token: contextvars.Token) -> None:
    """Called by the runner's outermost layer as a request leaves the app."""
    if _active is not None:
        _active.in_flight.discard(number)
    try:
        _request_number.reset(token)
    except ValueError:  # the app switched contexts under us; nothing to undo
        pass
