"""`ctxlab trace`: follow the user's own ContextVars through real requests.

    result = trace("myapp.main:app", requests=2, path="/users/1")
    result.findings  # lost, leaked, reset-error: each with its boundary and fix
    result.to_json()  # schema_version 1, as DESIGN.md shows

The app is loaded and served by `ctxlab.target` (what `probe` uses too);
requests are sent one after another, each waited for until the app has
finished with it, so that work with no request of its own belongs to the
request in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ctxlab.errors import TraceFileError, described
from ctxlab.findings import Finding, analyse
from ctxlab.labels import Labeller
from ctxlab.tracer import Event, Site, Tracer, TraceRecorder
from ctxlab.values import bounded

SCHEMA_VERSION = 1


class Labels:
    """T1/C1 labels for one trace, from the labeller `run` uses: every task
    and context the events name, and the tasks owning their ancestors'
    contexts (boundaries name them)."""

    def __init__(self, events: Sequence[Event], recorder: TraceRecorder) -> None:
        self.tasks_info = recorder.tasks
        self.labeller = Labeller(recorder.tasks)
        owners = {}
        for event in events:
            mark = event.mark
            while mark is not None and mark not in owners:
                owners[mark] = _Owned(mark.owner if mark.owner in recorder.tasks else None, mark)
                mark = mark.parent
        self.labeller.number([*events, *owners.values()])

    def __call__(self, item: Any) -> str:
        """The label of a task or a context mark (a thread by its name)."""
        return self.labeller.of(item) or getattr(item, "name", None) or "?"

    def task(self, task: Any) -> str | None:
        return self.labeller.of(task) if task is not None else None

    def parent(self, task: Any) -> str | None:
        """The label of the task that created `task`."""
        info = self.tasks_info.get(task)
        return self.labeller.of(info.parent) if info and info.parent is not None else None


@dataclass
class _Owned:
    """A context and the task it belongs to, numbered like a record."""

    task: Any
    context: Any


class Places:
    """Sites as `file:line`: app files relative to the app directory,
    library files relative to their site-packages (`starlette/routing.py`)."""

    def __init__(self, app_dir: Path, tracer: Tracer) -> None:
        self.app_dir = str(app_dir.resolve()) + os.sep
        self.roots = tracer.roots
        self.is_app = tracer.is_app
        self._files: dict[str, str] = {}

    def file(self, path: str) -> str:
        shown = self._files.get(path)
        if shown is None:
            real = os.path.realpath(path) if not path.startswith("<") else path
            root = next((root for root in [self.app_dir, *self.roots] if real.startswith(root)), None)
            shown = self._files[path] = real[len(root) :].replace(os.sep, "/") if root else real
        return shown

    def __call__(self, site: Site) -> str:
        return f"{self.file(site.path)}:{site.line}"


@dataclass
class SentRequest:
    request: int
    method: str
    path: str
    status: int | None
    error: str | None = None


@dataclass
class TraceResult:
    app: str
    server: str
    requests: list[SentRequest]
    events: list[Event]
    findings: list[Finding]
    labels: Labels
    places: Places
    options: dict[str, Any] = field(default_factory=dict)  # what `diff` needs to trace again
    names_used: set[str] = field(default_factory=set)  # every variable's, not only those --var names
    _shown: set | None = field(default=None, repr=False)

    def shown(self, event: Event) -> bool:
        """Worth showing a person: events of variables that the app's own
        code gets or sets itself, that are set while the app's code is on
        the stack, or that a finding names."""
        if self._shown is None:
            is_app = self.places.is_app
            set_ = {e.var for e in self.events if e.op == "set"}
            self._shown = {
                e.var for e in self.events if is_app(e.caller.path) or (e.var in set_ and is_app(e.site.path))
            }
            self._shown |= {f.read.var for f in self.findings}
        return event.var in self._shown

    @property
    def summary(self) -> dict[str, int]:
        kinds = [f.kind for f in self.findings]
        return {"requests": len(self.requests), "events": len(self.events), "lost": kinds.count("lost"),
                "leaked": kinds.count("leak"), "reset_errors": kinds.count("reset-error")}  # fmt: skip

    def event_json(self, event: Event) -> dict[str, Any]:
        data = {
            "seq": event.seq, "request": event.request, "op": event.op, "var": event.var.name, "value": bounded(event.value),
            "file": self.places.file(event.site.path), "line": event.site.line, "function": event.site.function,
            "task": self.labels.task(event.task), "parent_task": self.labels.parent(event.task),
            "context": self.labels(event.mark), "thread": event.thread,
        }  # fmt: skip
        if event.snapshot:
            data["snapshot"] = True  # a read of copy_context(), as structlog does
        if event.raised:
            data["raised"] = event.raised
        return data

    def _where(self, event: Event | None) -> dict[str, Any] | None:
        if event is None:
            return None
        return {"file": self.places.file(event.site.path), "line": event.site.line, "function": event.site.function,
                "request": event.request, "value": bounded(event.value), "task": self.labels.task(event.task),
                "context": self.labels(event.mark), "thread": event.thread}  # fmt: skip

    def finding_json(self, finding: Finding) -> dict[str, Any]:
        return {"kind": finding.kind, "var": finding.var, "request": finding.request, "requests": finding.requests,
                "read": self._where(finding.read), "set": self._where(finding.set),
                "boundary": finding.boundary, "fix": finding.fix, "scenario": finding.scenario}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "app": self.app,
            "server": self.server,
            "requests": [vars(r) for r in self.requests],
            "events": [self.event_json(e) for e in self.events],
            "findings": [self.finding_json(f) for f in self.findings],
            "summary": self.summary,
            "options": self.options,
        }


def trace(
    spec: str,
    *,
    requests: int = 2,
    path: str = "/",
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    data: bytes = b"",
    server: str = "asgi",
    lifespan: bool = False,
    variables: Sequence[str] = (),
    factory: bool = False,
    app_dir: Path = Path("."),
    loop: str = "asyncio",
) -> TraceResult:
    """Load the app at `spec`, send it `requests` requests while recording
    (on an asyncio or a uvloop event loop), and find what was lost or
    leaked.  Raises `target.TargetError` (a CtxlabError) when the app
    cannot be loaded or served."""
    from ctxlab import target

    with target.app_output_to_stderr():
        loaded = target.load(spec, factory=factory, app_dir=app_dir, server=server)
        request = target.Request(method=method, path=path, headers=tuple(headers), body=data)
        result = trace_app(loaded.asgi, [request] * requests, server=server, lifespan=lifespan,
                           variables=variables, app_dir=app_dir, name=spec, loop=loop)  # fmt: skip
    result.options = {"requests": requests, "path": path, "method": method, "headers": [list(h) for h in headers],
                      "data": data.decode("utf-8", "replace"), "lifespan": lifespan, "vars": list(variables),
                      "factory": factory, "app_dir": str(app_dir)}  # fmt: skip
    return result


def again(saved: dict[str, Any]) -> TraceResult:
    """Trace the app of a saved trace again, with the same options."""
    options = saved["options"]
    return trace(
        saved["app"], requests=options["requests"], path=options["path"], method=options["method"],
        headers=[tuple(h) for h in options["headers"]], data=options["data"].encode(), server=saved["server"],
        lifespan=options["lifespan"], variables=options["vars"], factory=options["factory"],
        app_dir=Path(options["app_dir"]),
    )  # fmt: skip


def load_trace(path: Path, document: Any = None) -> dict[str, Any]:
    """A trace saved with `ctxlab trace --json -o FILE` (`document`, if it
    was read already), checked enough that comparing it cannot crash."""
    from ctxlab.validate import read_json, trace_problem

    if document is None:
        document = read_json(path, "a saved trace", TraceFileError)
    if not is_trace(document):
        raise TraceFileError(f"{path} is not a saved trace; make one with 'ctxlab trace MODULE:ATTR --json -o {path}'")
    if document["schema_version"] != SCHEMA_VERSION:
        raise TraceFileError(
            f"{path} has schema_version {document['schema_version']!r}; this ctxlab reads {SCHEMA_VERSION}"
        )
    wrong = trace_problem(document)
    if wrong:
        raise TraceFileError(f"{path} is a malformed trace: {wrong}")
    return document


def is_trace(document: Any) -> bool:
    """A saved trace (rather than a scenario report)."""
    return isinstance(document, dict) and {"schema_version", "app", "events", "options"} <= document.keys()


@dataclass
class Change:
    """One difference between a saved trace and a new one."""

    what: str  # finding | event
    key: str
    before: Any
    after: Any


_GONE = "<absent>"


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """What changed between two traces of the same app: findings that
    appeared or went, and values read or set that differ.  Events are
    matched by request, operation, variable, file and function (lines move
    with any edit), in order of occurrence."""
    found = []

    def finding_key(f: dict[str, Any]) -> str:
        set_ = f.get("set") or {}
        return f"{f['kind']} {f['var']} read at {f['read']['file']}:{f['read']['function']}" + (
            f", set at {set_['file']}:{set_['function']}" if set_ else ""
        )

    old = {finding_key(f): "found" for f in before["findings"]}
    new = {finding_key(f): "found" for f in after["findings"]}
    for key in dict.fromkeys([*old, *new]):
        if (key in old) != (key in new):
            found.append(Change("finding", key, old.get(key, _GONE), new.get(key, _GONE)))
    old_events, new_events = _by_occurrence(before["events"]), _by_occurrence(after["events"])
    for key in dict.fromkeys([*old_events, *new_events]):
        a, b = old_events.get(key, _GONE), new_events.get(key, _GONE)
        if _without_addresses(a) != _without_addresses(b):
            request, op, var, file, function, n = key
            found.append(
                Change(
                    "event", f"request {request}: {op} {var} in {function} ({file})" + (f" #{n + 1}" if n else ""), a, b
                )
            )
    return found


# An object's repr names its address (`<Scope id=0x7f3877030d40 ...>`),
# which differs in every process: no change of the app's.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _without_addresses(value: Any) -> Any:
    return value if value is _GONE else _ADDRESS.sub("0x…", json.dumps(value, sort_keys=True))


def _by_occurrence(events: list[dict[str, Any]]) -> dict[tuple, Any]:
    seen: dict[tuple, int] = {}
    keyed = {}
    for e in events:
        base = (e["request"], e["op"], e["var"], e["file"], e["function"])
        n = seen[base] = seen.get(base, -1) + 1
        keyed[(*base, n)] = e["value"]
    return keyed


def trace_app(
    app: Any,
    requests: Sequence[Any],
    *,
    server: str,
    lifespan: bool,
    variables: Sequence[str],
    app_dir: Path,
    name: str,
    loop: str,
) -> TraceResult:
    """Trace `requests` (`target.Request`s) sent to the ASGI object `app`,
    on a new event loop of the kind `loop` names (asyncio or uvloop)."""
    from ctxlab import runner, servers, target

    recorder = TraceRecorder()
    tracer = Tracer(recorder, variables)
    sent: list[SentRequest] = []

    async def drive() -> None:
        recorder.set_root(asyncio.current_task())
        async with target.serving(servers.attribute_requests(app), server=server, lifespan=lifespan) as client:
            for number, request in enumerate(requests, 1):
                reply = await client.send(request)
                # A server answers before the app has finished (a yield
                # dependency's teardown): request n ends before n + 1 starts.
                while recorder.in_flight:
                    await asyncio.sleep(0.001)
                error = described(reply.error) if reply.error else None
                sent.append(SentRequest(number, request.method, request.path, reply.status, error))

    with runner.scenario_loop(recorder, loop) as running, tracer:
        runner.run_until_done_or_ctrl_c(running, drive())
    return result_of(tracer, name, server, sent, app_dir)


def result_of(tracer: Tracer, name: str, server: str, sent: list[SentRequest], app_dir: Path) -> TraceResult:
    """Label and analyse what `tracer` recorded."""
    labels = Labels(tracer.events, tracer.recorder)
    places = Places(app_dir, tracer)
    findings = analyse(tracer.events, tracer.recorder.origins, labels, places, places.is_app)
    return TraceResult(name, server, sent, tracer.events, findings, labels, places, names_used=tracer.names_used())
