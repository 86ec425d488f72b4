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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ctxlab.findings import Finding, analyse
from ctxlab.tracer import Event, Site, TraceRecorder, Tracer

SCHEMA_VERSION = 1


@dataclass
class Labels:
    """T1/C1 labels for the tasks and contexts of one trace, in creation order."""

    tasks: dict[Any, str] = field(default_factory=dict)
    contexts: dict[Any, str] = field(default_factory=dict)
    parents: dict[Any, Any] = field(default_factory=dict)  # task -> the task that created it

    @classmethod
    def of(cls, events: Sequence[Event], recorder: TraceRecorder) -> Labels:
        tasks, marks = {}, {}
        unknown = len(recorder.tasks) + 1  # tasks the factory never saw sort last, as first seen
        for event in events:
            task = event.task
            while task is not None and task not in tasks:
                info = recorder.tasks.get(task)
                tasks[task] = info.order if info else unknown + len(tasks)
                task = info.parent if info else None
            mark = event.mark
            while mark is not None and mark not in marks:
                marks[mark] = mark.order
                if mark.owner is not None and mark.owner in recorder.tasks:
                    tasks.setdefault(mark.owner, recorder.tasks[mark.owner].order)
                mark = mark.parent
        labels = cls()
        labels.tasks = {t: f"T{n}" for n, t in enumerate(sorted(tasks, key=tasks.get), 1)}
        labels.contexts = {m: f"C{n}" for n, m in enumerate(sorted(marks, key=marks.get), 1)}
        labels.parents = {t: recorder.tasks[t].parent for t in tasks if t in recorder.tasks}
        return labels

    def __call__(self, item: Any) -> str:
        """The label of a task or a context mark (a thread by its name)."""
        if item in self.tasks:
            return self.tasks[item]
        if item in self.contexts:
            return self.contexts[item]
        return getattr(item, "name", None) or "?"

    def parent(self, task: Any) -> str | None:
        parent = self.parents.get(task)
        return self.tasks.get(parent) if parent is not None else None


class Places:
    """Sites as `file:line`: app files relative to the app directory,
    library files relative to their site-packages (`starlette/routing.py`)."""

    def __init__(self, app_dir: Path, tracer: Tracer) -> None:
        self.app_dir = str(app_dir.resolve()) + os.sep
        self.roots = tracer._roots

    def file(self, path: str) -> str:
        real = os.path.realpath(path) if not path.startswith("<") else path
        for root in [self.app_dir, *self.roots]:
            if real.startswith(root):
                return real[len(root) :].replace(os.sep, "/")
        return real

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

    @property
    def summary(self) -> dict[str, int]:
        kinds = [f.kind for f in self.findings]
        return {"requests": len(self.requests), "events": len(self.events), "lost": kinds.count("lost"),
                "leaked": kinds.count("leak"), "reset_errors": kinds.count("reset-error")}  # fmt: skip

    def event_json(self, event: Event) -> dict[str, Any]:
        data = {
            "seq": event.seq, "request": event.request, "op": event.op, "var": event.var.name, "value": event.value,
            "file": self.places.file(event.site.path), "line": event.site.line, "function": event.site.function,
            "task": self.labels.tasks.get(event.task), "parent_task": self.labels.parent(event.task),
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
                "request": event.request, "value": event.value, "task": self.labels.tasks.get(event.task),
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
) -> TraceResult:
    """Load the app at `spec`, send it `requests` requests while recording,
    and find what was lost or leaked.  Raises `target.TargetError` when the
    app cannot be loaded or served."""
    from ctxlab import target

    with target.app_output_to_stderr():
        loaded = target.load(spec, factory=factory, app_dir=app_dir)
        request = target.Request(method=method, path=path, headers=tuple(headers), body=data)
        return trace_app(loaded.asgi, [request] * requests, server=server, lifespan=lifespan,
                         variables=variables, app_dir=app_dir, name=spec)  # fmt: skip


def trace_app(
    app: Any,
    requests: Sequence[Any],
    *,
    server: str = "asgi",
    lifespan: bool = False,
    variables: Sequence[str] = (),
    app_dir: Path = Path("."),
    name: str = "app",
) -> TraceResult:
    """Trace `requests` (`target.Request`s) sent to the ASGI object `app`."""
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
                error = f"{type(reply.error).__name__}: {reply.error}" if reply.error else None
                sent.append(SentRequest(number, request.method, request.path, reply.status, error))

    with runner.scenario_loop(recorder) as loop, tracer:
        runner.run_until_done_or_ctrl_c(loop, drive())
    labels = Labels.of(tracer.events, recorder)
    places = Places(app_dir, tracer)
    findings = analyse(tracer.events, recorder.origins, labels, places, tracer.is_app)
    return TraceResult(name, server, sent, tracer.events, findings, labels, places)
