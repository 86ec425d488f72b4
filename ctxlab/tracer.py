"""The recorder for code ctxlab did not write: every ContextVar get, set and
reset that Python code makes, with where it happened.

Python 3.12+ uses `sys.monitoring`: a CALL event reports calls of C
methods such as `ContextVar.get`, and a call site that is not a ContextVar
method answers DISABLE, so after its first call it costs nothing.  Python
3.10 and 3.11 have no such hook (a profile hook runs for every call the app
makes, which alone triples the cost of a request), so while a trace runs
ContextVar's own methods and `contextvars.copy_context` are replaced by
functions that tell the recorder and then make the original call (see
`_replace_methods`).

The monitoring hook does not see the arguments or the result of a C call,
so on every Python the values are read around the call: a get's value is
the variable's value at the call, a set's is its value once the call
returned.  What a reset raised comes from the exception itself: the
replacement catches it, and on 3.12+ the RAISE event that follows the
C_RAISE carries it.  Calls made from C (a `Context.run(var.set, x)`) are
not seen on 3.12+; on 3.10 and 3.11 they are (C looks the method up like
Python code does).  What the recorder itself reads is never recorded:
hooks do not fire inside their callbacks, and the replacements pass
ctxlab's own variables straight through.
"""

from __future__ import annotations

import asyncio
import contextvars
import dis
import gc
import itertools
import os
import re
import sys
import sysconfig
import threading
import types
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ctxlab.errors import CtxlabError
from ctxlab.probe import ContextMark, Recorder
from ctxlab.values import UNSET, jsonable

_GET, _SET, _RESET = ContextVar.get, ContextVar.set, ContextVar.reset
_BUILTIN = types.BuiltinMethodType
_MISSING = object()
_copy_context = contextvars.copy_context
_LOOP_STEP = asyncio.events.Handle._run.__code__
_CTXLAB = str(Path(__file__).resolve().parent) + os.sep
_CTXLAB_SCENARIOS = _CTXLAB + "scenarios" + os.sep  # bundled scenarios in a wheel are app code
_QUALIFIED_CODE = sys.version_info >= (3, 11)  # code objects know their Class.method


def _library_roots() -> list[str]:
    """Directories whose code is not the app's: the standard library and
    every site-packages directory."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return sorted((str(Path(root).resolve()) + os.sep for root in roots), key=len, reverse=True)


@dataclass(slots=True)  # a trace makes thousands
class Site:
    """Where an event happened: the app's innermost frame, or the library's
    own frame when no app code is on the stack."""

    path: str  # absolute
    line: int
    function: str


@dataclass(slots=True)
class Event:
    """One get, set or reset (a snapshot read is a get with `snapshot`)."""

    seq: int
    request: int | None
    op: str  # get | set | reset
    var: ContextVar
    value: Any  # jsonable; UNSET when the variable had no value
    site: Site
    caller: Site  # the frame that made the call itself (maybe a library's)
    task: Any
    mark: ContextMark
    thread: str
    snapshot: bool = False
    before: Any = None  # set, reset: the value before the call
    token_set: Event | None = None  # reset: the set whose token it was given
    raised: str | None = None  # reset: the exception it raised
    code: Any = field(default=None, repr=False)  # the calling code object

    @property
    def context(self) -> ContextMark:
        """The context mark, by the name the labeller reads."""
        return self.mark


@dataclass
class Origin:
    """How a task came to be: who created it, from where, and when."""

    request: int | None
    stack: list[Site]  # innermost first


class TraceRecorder(Recorder):
    """probe's recorder (task factory, context marks, request numbers)
    plus, for each task, where it was created."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[Any, Origin] = {}
        self.tracer: Tracer | None = None

    def task_factory(self, loop, coro, *, context=None, **kwargs):
        # Mark the creator's context before the task copies it, so that the
        # copy names it as its parent.
        origin = self.tracer.origin() if self.tracer is not None else None
        task = super().task_factory(loop, coro, context=context, **kwargs)
        if origin is not None:
            self.origins[task] = origin
        return task


class Tracer:
    """Records ContextVar operations made by Python code while started.

    `variables` narrows the recording to those names; ctxlab's own
    variables (named `ctxlab.*`) are never recorded.
    """

    def __init__(self, recorder: TraceRecorder, variables: Iterable[str] = ()) -> None:
        self.variables = set(variables)
        self.attach(recorder)
        self._wanted: dict[ContextVar, bool] = {}
        self._app_code: dict[str, bool] = {}
        self._reads_snapshot: dict[Any, dict[int, bool]] = {}
        self._qualnames: dict[Any, str] = {}
        self._sites: dict[tuple[int, int], tuple[Any, Site]] = {}  # (id(code), offset) -> (code, site)
        self._owners: dict[str, str] = {}
        self._pending: dict[int, Event] = {}  # thread id -> its set/reset in progress
        self._raising: dict[int, Event] = {}  # thread id -> its reset that raised, until the exception is seen
        self.roots = _library_roots()
        self._tool: int | None = None

    def attach(self, recorder: TraceRecorder) -> None:
        """Record afresh, into `recorder`: a running tracer keeps its hooks
        (and the call sites it already knows are not ContextVar methods)."""
        self.recorder = recorder
        recorder.tracer = self
        self.events: list[Event] = []
        self._seq = itertools.count(1)
        self._set_by: dict[int, dict[ContextVar, str]] = {}  # request -> variables it set -> by whom

    # -- switching on and off ------------------------------------------------------
    def start(self) -> None:
        if sys.version_info >= (3, 12):
            monitoring = sys.monitoring
            events = monitoring.events
            free = [tool for tool in range(6) if monitoring.get_tool(tool) is None]
            if not free:
                raise CtxlabError("cannot trace: every sys.monitoring tool id is taken by other tools")
            self._tool = free[0]
            monitoring.use_tool_id(self._tool, "ctxlab trace")
            monitoring.register_callback(self._tool, events.CALL, self._on_call)
            monitoring.register_callback(self._tool, events.C_RETURN, self._on_return)
            monitoring.register_callback(self._tool, events.C_RAISE, self._on_raise)
            monitoring.register_callback(self._tool, events.RAISE, self._on_exception)
            monitoring.set_events(self._tool, events.CALL | events.C_RETURN | events.C_RAISE | events.RAISE)
            # Call sites disabled by an earlier trace must report again.
            monitoring.restart_events()
        else:
            _replace_methods(self._wrappers())
        # The events a trace keeps make the collector run full collections,
        # and each walks every object of the app and its libraries: on the
        # FastAPI benchmark, a third of the cost of tracing.  What exists
        # when the trace starts is set aside until it stops (gc.freeze); any
        # of it that becomes garbage meanwhile is collected after that.
        gc.freeze()

    def stop(self) -> None:
        if self._tool is not None:
            sys.monitoring.set_events(self._tool, 0)
            sys.monitoring.free_tool_id(self._tool)
            self._tool = None
        else:
            _replace_methods(_ORIGINALS)
        gc.unfreeze()

    def __enter__(self) -> Tracer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def names_used(self) -> set[str]:
        """The names of the variables gotten, set or reset while recording,
        those `variables` left out included (ctxlab's own aside)."""
        return {var.name for var in self._wanted if not var.name.startswith("ctxlab.")}

    # -- the hooks -----------------------------------------------------------
    def _on_call(self, code, offset, callable_, arg0):
        if callable_ is _GET or callable_ is _SET or callable_ is _RESET:
            var = arg0
        elif type(callable_) is _BUILTIN:
            var = callable_.__self__
            if type(var) is not ContextVar:
                if callable_ is not _copy_context or not self._iterates_copy(code, offset):
                    return sys.monitoring.DISABLE
                self._snapshot(sys._getframe(1))
                return None
        else:
            return sys.monitoring.DISABLE
        if self._wanted.get(var) is False and self._private(var, code):
            return sys.monitoring.DISABLE
        self._before(callable_.__name__, var, sys._getframe(1))
        return None

    def _on_return(self, code, offset, callable_, arg0):
        if self._pending:
            self._after(None)

    def _on_raise(self, code, offset, callable_, arg0):
        # C_RAISE does not carry the exception: the RAISE event that follows
        # at once, in the caller's frame, does.
        if self._pending:
            event = self._after(UNSEEN_EXCEPTION)
            if event is not None:
                self._raising[threading.get_ident()] = event

    def _on_exception(self, code, offset, exception):
        # Every exception raised while a trace runs comes here (about 65 ns
        # each on 3.12, a raise and catch costs 160), nearly all to return.
        if self._raising:
            event = self._raising.pop(threading.get_ident(), None)
            if event is not None:
                event.raised = _raised(exception)

    def _wrappers(self) -> dict[str, Any]:
        """What replaces ContextVar's get, set and reset, and copy_context,
        while a 3.10 or 3.11 trace runs: each tells the recorder, then makes
        the original call.  A profile hook would see the same calls, but it
        runs for every call the app makes, and that alone costs up to 3x on
        a FastAPI app; these run only for ContextVar calls."""
        before, after, snapshot, wanted = self._before, self._after, self._snapshot, self._wanted

        def get(var, *default):
            if wanted.get(var) is not False:  # ctxlab's own variables are never recorded
                before("get", var, sys._getframe(1))
            return _GET(var, *default)

        def changing(op: str, method):
            def change(var, argument):
                if wanted.get(var) is False:
                    return method(var, argument)
                before(op, var, sys._getframe(1))
                try:
                    result = method(var, argument)
                except BaseException as exception:
                    after(exception)
                    raise
                after(None)
                return result

            change.__name__ = change.__qualname__ = op
            return change

        def copy_context():
            snapshot(sys._getframe(1))
            return _copy_context()

        return {
            "get": get,
            "set": changing("set", _SET),
            "reset": changing("reset", _RESET),
            "copy_context": copy_context,
        }

    # -- recording -----------------------------------------------------------------
    def _private(self, var: ContextVar, code) -> bool:
        """A call site of ctxlab's own bookkeeping (its probe recorder's
        variables, from its own modules): no such call is ever recorded."""
        return (
            var.name.startswith("ctxlab.")
            and code.co_filename.startswith(_CTXLAB)
            and not self.is_app(code.co_filename)
        )

    def _wants(self, var: ContextVar) -> bool:
        wanted = self._wanted.get(var)
        if wanted is None:
            wanted = self._wanted[var] = not var.name.startswith("ctxlab.") and (
                not self.variables or var.name in self.variables
            )
        return wanted

    def _before(self, op: str, var: ContextVar, frame) -> None:
        wanted = self._wanted.get(var)
        if not (wanted or (wanted is None and self._wants(var))) or op not in ("get", "set", "reset"):
            return
        value = _GET(var, _MISSING)  # the original: on 3.10/3.11 var.get is ours
        event = self._event(op, var, value if type(value) in _PLAIN else _shown(value), frame)
        if op == "get":
            self.events.append(event)
            return
        event.before = event.value
        if op == "reset":
            event.token_set = self._token_set(var, frame)
        self._pending[threading.get_ident()] = event

    def _after(self, raised: BaseException | None) -> Event | None:
        """The set or reset in progress ended, and the exception it raised."""
        event = self._pending.pop(threading.get_ident(), None)
        if event is None or (raised is not None and event.op == "set"):  # a set that raised changed nothing
            return None
        value = _GET(event.var, _MISSING)
        event.value = _shown(value)
        if raised is not None:
            event.raised = _raised(raised)
        elif event.op == "set" and event.request is not None:
            self._set_by.setdefault(event.request, {})[event.var] = self.owner(event.caller.path)
        self.events.append(event)
        return event

    def _snapshot(self, frame) -> None:
        """`copy_context()` iterated: a read of every variable it should
        hold, which are those set during the request by the same library
        (all of them when the app itself reads the snapshot)."""
        if not self._iterates_copy(frame.f_code, frame.f_lasti):
            return
        owner = self.owner(frame.f_code.co_filename)
        for var in self.should_hold(self._request(self.recorder.where()[2]), owner):
            value = _GET(var, _MISSING)
            event = self._event("get", var, _shown(value), frame)
            event.snapshot = True
            self.events.append(event)

    def should_hold(self, request: int | None, owner: str) -> list[ContextVar]:
        """The variables request `request` set, by code of `owner` (any, for the app)."""
        setters = self._set_by.get(request, {})
        return [var for var, setter in setters.items() if owner == "app" or setter == owner]

    def _event(self, op: str, var: ContextVar, value: Any, frame) -> Event:
        task, mark, request = self.recorder.where()
        caller = self._site_of(frame)
        return Event(
            next(self._seq), self._request(request), op, var, value, self._app_site(frame, task, caller), caller,
            task, mark, threading.current_thread().name, code=frame.f_code,
        )  # fmt: skip

    def _request(self, request: int | None) -> int | None:
        """Work with no request of its own (a pool thread, a task started at
        startup) belongs to the request in flight: requests run one after
        another."""
        if request is None and len(self.recorder.in_flight) == 1:
            (request,) = self.recorder.in_flight
        return request

    def origin(self) -> Origin:
        """Where a task is being created, and during which request."""
        task, _, request = self.recorder.where()
        stack = []
        # Up to the app's own frame: what made the task lies below it.
        for frame in _own_frames(sys._getframe(2), task):
            stack.append(self._site_of(frame))
            if len(stack) == 12 or self.is_app(frame.f_code.co_filename):
                break
        return Origin(self._request(request), stack)

    # -- where: the app's own code -------------------------------------------------
    def is_app(self, path: str) -> bool:
        known = self._app_code.get(path)
        if known is None:
            real = os.path.realpath(path) if not path.startswith("<") else path
            known = self._app_code[path] = not (
                path.startswith("<frozen")
                or (real.startswith(_CTXLAB) and not real.startswith(_CTXLAB_SCENARIOS))
                or any(real.startswith(root) for root in self.roots)
            )
        return known

    def owner(self, path: str) -> str:
        """`app`, or the top-level package a library file belongs to."""
        owner = self._owners.get(path)
        if owner is None:
            owner = self._owners[path] = "app" if self.is_app(path) else self._package(os.path.realpath(path))
        return owner

    def _package(self, real: str) -> str:
        for root in self.roots:
            if real.startswith(root):
                return real[len(root) :].split(os.sep, 1)[0].removesuffix(".py")
        return real

    def _site_of(self, frame) -> Site:
        """The site `frame` is at, made once per code object and position:
        a frame's line number is found by scanning its code's line table,
        which costs most in the long functions of event loops and servers."""
        code = frame.f_code
        key = (id(code), frame.f_lasti)  # a code object's hash reads all its bytecode on 3.12
        known = self._sites.get(key)
        if known is None or known[0] is not code:
            name = code.co_qualname if _QUALIFIED_CODE else self._qualname(code, frame)
            known = self._sites[key] = (code, Site(code.co_filename, frame.f_lineno or code.co_firstlineno, name))
        return known[1]

    def _qualname(self, code, frame) -> str:
        """`Class.method` on 3.10 (later code objects carry it), found once
        per code object from the class of `self` or `cls`."""
        name = self._qualnames.get(code)
        if name is None:
            name = self._qualnames[code] = _defining_class(code, frame)
        return name

    def _app_site(self, frame, task: Any, caller: Site) -> Site:
        """The innermost frame of the app's own code, or `caller` (the
        site of `frame`) when that is the app's or no frame is."""
        for current in _own_frames(frame, task):
            if self.is_app(current.f_code.co_filename):
                return caller if current is frame else self._site_of(current)
        return caller

    # -- tokens and snapshots ---------------------------------------------------------------
    def _token_set(self, var: ContextVar, frame) -> Event | None:
        """The set whose token this reset was given.

        The hooks do not see the token itself: look for Tokens of this
        variable among the caller's locals, and match them to a set of the
        same variable from the same function with the same old value.
        """
        tokens = [value for value in frame.f_locals.values() if type(value) is Token and value.var is var]
        olds = {UNSET if t.old_value is Token.MISSING else jsonable(t.old_value) for t in tokens}
        fallback = None
        for event in reversed(self.events):
            if event.op != "set" or event.var is not var:
                continue
            if event.code is frame.f_code and (not tokens or event.before in olds):
                return event
            fallback = fallback or event
        return fallback

    def _iterates_copy(self, code, offset: int) -> bool:
        """Does the call of copy_context() at `offset` in this code make a
        copy that is iterated (as structlog's get_contextvars and
        merge_contextvars do), rather than one passed on to run something in?
        `offset` may be past the call's start: 3.11's frame gives the last
        of its cache entries."""
        calls = self._reads_snapshot.get(code)
        if calls is None:
            calls = self._reads_snapshot[code] = _copy_calls(code)
        at = max((start for start in calls if start <= offset), default=None)
        return at is not None and calls[at]


_ORIGINALS = {"get": _GET, "set": _SET, "reset": _RESET, "copy_context": _copy_context}


def _replace_methods(functions: dict[str, Any]) -> None:
    """Put `functions` in place of ContextVar's methods and of
    `contextvars.copy_context` (3.10 and 3.11 only).

    ContextVar is a C type whose attributes cannot be set, but its
    dictionary can be reached through the garbage collector's referents and
    changed, as long as the type is then told (PyType_Modified) so that the
    interpreter drops the lookups it cached.  Only CPython versions that
    no longer change (3.10 and 3.11) do this; 3.12+ use sys.monitoring.
    Code that took `from contextvars import copy_context` before the trace
    keeps the original: its snapshots go unseen.
    """
    import ctypes

    methods = gc.get_referents(ContextVar.__dict__)[0]
    for name in ("get", "set", "reset"):
        methods[name] = functions[name]
    ctypes.pythonapi.PyType_Modified(ctypes.py_object(ContextVar))
    contextvars.copy_context = functions["copy_context"]


def _own_frames(frame, task: Any) -> Iterable[Any]:
    """`frame` and its callers, up to the first frame of `task` (the one
    running, if any).  Beyond it lies whoever runs the event loop, not the
    task's own code: asyncio's Handle._run, or on uvloop, whose steps run
    from C, the frame that called run_until_complete (a test, a script)."""
    coro = task.get_coro() if task is not None else None
    first = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    while frame is not None and frame.f_code is not _LOOP_STEP:
        yield frame
        if frame is first:
            return
        frame = frame.f_back


_PLAIN = (str, bool, type(None))  # as values.PLAIN: what needs no jsonable()


def _raised(exception: BaseException) -> str:
    """What a reset raised, in Python's words, its token's repr
    (whose addresses change from run to run) made "the token"."""
    text = re.sub(r"^<Token .* at 0x[0-9a-f]+>(?= )", "the token", str(exception))
    return f"{type(exception).__name__}: {text}" if text else type(exception).__name__


# Stands for a reset's exception from C_RAISE until the RAISE event that
# follows shows it (3.12+).
UNSEEN_EXCEPTION = Exception("not seen by the trace")


def _shown(value: Any) -> Any:
    """The value as reports show it (plain values as they are: the common case)."""
    if value is _MISSING:
        return UNSET
    return value if type(value) in _PLAIN else jsonable(value)


def _defining_class(code, frame) -> str:
    if code.co_argcount and code.co_varnames[0] in ("self", "cls"):
        first = frame.f_locals.get(code.co_varnames[0])
        for cls in type(first).__mro__ if not isinstance(first, type) else first.__mro__:
            function = vars(cls).get(code.co_name)
            if getattr(getattr(function, "__func__", function), "__code__", None) is code:
                return f"{cls.__qualname__}.{code.co_name}"
    return code.co_name


_MAPPING_READS = {"keys", "items", "values", "__iter__"}
_CONSUMERS = {"dict", "list", "tuple", "sorted", "set", "frozenset"}  # builtins that iterate their argument
# What 3.11+ puts between a load and its call, and 3.13+ after making a
# function that has a closure or defaults.
_NOT_STEPS = {"CACHE", "PUSH_NULL", "PRECALL", "SET_FUNCTION_ATTRIBUTE"}


def _copy_calls(code) -> dict[int, bool]:
    """The calls of copy_context in `code`, by offset: is the copy each
    makes iterated, there and then (`for ... in copy_context().items()`,
    `dict(copy_context())`) or under the name it is stored as?  A copy
    handed to another function, or whose `.run` is called, is not."""
    steps = [ins for ins in dis.get_instructions(code) if ins.opname not in _NOT_STEPS]

    def iterates(at: int, start: int) -> bool | str:
        """What happens to the value made by steps[start:at + 1]: iterated
        (True), stored (the name), or anything else (False)."""
        following = steps[at + 1] if at + 1 < len(steps) else None
        if following is not None and following.argval in _MAPPING_READS and following.opname.startswith("LOAD_"):
            at += 2  # `.items()` called: the view it returns counts as the copy
            following = steps[at + 1] if at + 1 < len(steps) else None
        if following is None:
            return False
        if following.opname == "GET_ITER":
            return True
        if following.opname.startswith("STORE"):
            return following.argval
        if not following.opname.startswith("CALL") or not start:
            return False
        callee = steps[start - 1]
        if callee.opname == "MAKE_FUNCTION":
            # 3.15+: a generator expression is called on the iterable itself
            # (its GET_ITER moved into the generator's own code).
            return getattr(steps[start - 2].argval, "co_name", None) == "<genexpr>"
        return callee.opname in ("LOAD_GLOBAL", "LOAD_NAME") and callee.argval in _CONSUMERS

    calls: dict[int, bool] = {}
    stored: dict[Any, list[int]] = {}
    for i, ins in enumerate(steps):
        if ins.argval != "copy_context" or not ins.opname.startswith("LOAD"):
            continue
        call = next((n for n in range(i + 1, len(steps)) if steps[n].opname.startswith("CALL")), None)
        if call is None:
            continue
        start = i - 1 if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") else i  # `contextvars.copy_context`
        what = iterates(call, start)
        calls[steps[call].offset] = what is True
        if what and what is not True:
            stored.setdefault(what, []).append(steps[call].offset)
    for i, ins in enumerate(steps):
        if ins.opname.startswith("LOAD") and ins.argval in stored and iterates(i, i) is True:
            calls.update(dict.fromkeys(stored[ins.argval], True))
    return calls
