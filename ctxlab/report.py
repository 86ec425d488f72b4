"""Compare what was observed with what was expected; the JSON report."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from ctxlab import __version__
from ctxlab.config import RunConfig, run_label
from ctxlab.errors import ReportFileError, ScenarioError
from ctxlab.labels import Where, label
from ctxlab.scenario import Env, Scenario, package_version
from ctxlab.values import NOT_REACHED, jsonable, same

if TYPE_CHECKING:
    from ctxlab.probe import Record
    from ctxlab.runner import Run

SCHEMA_VERSION = 1
PACKAGES = ("starlette", "fastapi", "anyio", "httpx", "uvicorn")


class Status(str, Enum):
    """How one scenario run went; the value is what the JSON report says."""

    PASS = "pass"  # every observation matched its expectation
    DRIFT = "drift"  # some observation did not
    ERROR = "error"  # the scenario crashed, timed out or is badly declared
    SKIPPED = "skipped"  # not run here (another server, a package version)

    def __str__(self) -> str:
        return self.value


@dataclass
class Observation:
    """One (probe, variable) reading set against its expectation."""

    seq: int | None
    request: int | None
    probe: str
    var: str
    observed: Any
    expected: Any
    naive: Any
    match: bool
    task: str | None
    parent_task: str | None
    context: str | None
    thread: str | None
    # For the task tree in `explain`; not part of the JSON contract.
    parent_context: str | None = field(default=None, repr=False)

    @property
    def pitfall(self) -> bool:
        """Would a naive reading expect something else here?"""
        return self.naive != self.expected

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["parent_context"]
        return data


@dataclass
class ScenarioReport:
    """The outcome of one scenario on one run configuration."""

    name: str
    status: Status
    duration_ms: float = 0.0
    error: str | None = None  # what crashed, or why it was skipped
    onion: list[str] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    config: RunConfig = RunConfig()

    @property
    def server(self) -> str:
        """The server this scenario ran on (or was skipped for)."""
        return self.config.server

    @property
    def label(self) -> str:
        """The server as tables show it, with the loop and parser it ran on."""
        return run_label(self.config)

    @property
    def drifted(self) -> list[Observation]:
        """The observations that did not match their expectation."""
        return [o for o in self.observations if not o.match]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "duration_ms": round(self.duration_ms, 1),
            "error": self.error,
            "onion": self.onion,
            "observations": [o.to_json() for o in self.observations],
        }


# A value shown longer than this is cut, saying how long it was: a 5 MB
# string read eight times a request printed 108 MB of tables.
LONGEST_SHOWN = 1000


def show(value: Any) -> str:
    """A report value as a person reads it: `null` for None, JSON otherwise;
    markers such as <unset> as they are."""
    text = value if isinstance(value, str) and value.startswith("<") else json.dumps(value)
    return text if len(text) <= LONGEST_SHOWN else f"{text[:LONGEST_SHOWN]}… ({len(text):,} characters)"


def drift_line(o: Observation) -> str:
    """`request 1: bad.after context: expected null, observed {...}`."""
    request = f"request {o.request}: " if o.request else ""
    return f"{request}{o.probe} {o.var}: expected {show(o.expected)}, observed {show(o.observed)}"


def compare(scenario: Scenario, run: Run, config: RunConfig) -> ScenarioReport:
    """Set each observation of `run` against what `scenario` expects under
    `config`; an expected probe that never ran is drift, unless the run
    crashed (its error says why)."""
    report = ScenarioReport(scenario.name, Status.PASS, run.duration_ms, run.error, run.onion, config=config)
    try:
        for record, where in zip(run.records, label(run.records, run.tasks)):
            report.observations.append(_observation(scenario, record, where, config))
        if run.error is None:
            report.observations.extend(_unreached(scenario, run.records, config))
    except ScenarioError as exc:
        report.error = f"scenario definition: {exc}"
    report.status = _status(report)
    return report


def _observation(scenario: Scenario, record: Record, where: Where, config: RunConfig) -> Observation:
    """A record set against its expectation for its request."""
    if record.var not in scenario.expect.get(record.probe, {}):
        raise ScenarioError(f"probe {record.probe!r} saw {record.var!r}, which the scenario does not expect")
    env = Env.of(config, record.request)
    expected = jsonable(scenario.expected(record.probe, record.var, env))
    naive = jsonable(scenario.naive_value(record.probe, record.var, env))
    return Observation(
        seq=record.seq,
        request=record.request,
        probe=record.probe,
        var=record.var,
        observed=record.value,
        expected=expected,
        naive=naive,
        match=same(record.value, expected),
        thread=record.thread,
        **asdict(where),
    )


def _unreached(scenario: Scenario, records: list[Record], config: RunConfig) -> Iterator[Observation]:
    """A drifted observation for each expected (probe, var) no record has."""
    seen = {(record.probe, record.var) for record in records}
    env = Env.of(config)
    for probe, variables in scenario.expect.items():
        for var in variables:
            if (probe, var) not in seen:
                expected = jsonable(scenario.expected(probe, var, env))
                naive = jsonable(scenario.naive_value(probe, var, env))
                yield Observation(None, None, probe, var, NOT_REACHED, expected, naive, False, *[None] * 4)


def _status(report: ScenarioReport) -> Status:
    if report.error:
        return Status.ERROR
    return Status.DRIFT if report.drifted else Status.PASS


def skipped(name: str, reason: str, config: RunConfig) -> ScenarioReport:
    """The report of a scenario not run under `config`, and why."""
    return ScenarioReport(name, Status.SKIPPED, error=reason, config=config)


def environment() -> dict[str, Any]:
    """The Python and framework versions a report was made with."""
    import platform

    return {"python": platform.python_version(), "packages": {p: package_version(p) for p in PACKAGES}}


@dataclass
class Report:
    """Every scenario report of one command, on each server it ran."""

    scenarios: list[ScenarioReport]
    servers: tuple[str, ...] = ("asgi",)
    spec_version: str | None = None
    interrupted: bool = False  # Ctrl-C: the scenarios that finished

    def count(self, status: Status) -> int:
        return sum(s.status == status for s in self.scenarios)

    @property
    def summary(self) -> dict[str, int]:
        return {
            "total": len(self.scenarios),
            "passed": self.count(Status.PASS),
            "drifted": self.count(Status.DRIFT),
            "errors": self.count(Status.ERROR),
            "skipped": self.count(Status.SKIPPED),
        }

    @property
    def exit_code(self) -> int:
        """The documented exit code: 130, 3, 1, 5 or 0, first that applies."""
        if self.interrupted:
            return 130
        if self.count(Status.ERROR):
            return 3
        if self.count(Status.DRIFT):
            return 1
        if not self.count(Status.PASS):
            return 5
        return 0

    def to_json(self) -> dict[str, Any]:
        several = len(self.servers) > 1
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "ctxlab", "version": __version__},
            "environment": environment(),
            "server": "both" if several else self.servers[0],
            "spec_version": self.spec_version,
            # On several servers each scenario appears once per server, tagged.
            "scenarios": [{**s.to_json(), "server": s.server} if several else s.to_json() for s in self.scenarios],
            "summary": self.summary,
        }


# -- saved reports: snapshot and diff ---------------------------------------------
def read_saved(path: Path) -> Any:
    """The JSON document a user saved (a report or a trace), read once: a
    pipe (`diff <(...)`, `/dev/stdin`) cannot be read twice."""
    from ctxlab.validate import read_json

    return read_json(path, "a ctxlab report", ReportFileError, empty=f"make one with 'ctxlab snapshot -o {path}'")


def is_saved_trace(document: Any) -> bool:
    """A saved trace rather than a report, as far as telling them apart
    goes (the trace's own reader says what a broken one lacks)."""
    return isinstance(document, dict) and "events" in document


def load_report(path: Path, servers: Iterable[str] = ("asgi", "uvicorn"), document: Any = None) -> dict[str, Any]:
    """A saved report (`document`, if it was read already), checked enough
    that diffing it cannot crash."""
    from ctxlab.validate import problem

    if document is None:
        document = read_saved(path)
    if not isinstance(document, dict) or "schema_version" not in document:
        raise ReportFileError(f"{path} is not a ctxlab report (no schema_version)")
    if is_saved_trace(document):
        raise ReportFileError(f"{path} is a saved trace, not a snapshot; 'ctxlab diff {path}' compares it")
    if document["schema_version"] != SCHEMA_VERSION:
        raise ReportFileError(
            f"{path} has schema_version {document['schema_version']!r}; this ctxlab reads {SCHEMA_VERSION}"
        )
    wrong = problem(document, servers)
    if wrong:
        raise ReportFileError(f"{path} is a malformed ctxlab report: {wrong}")
    return document


@dataclass
class Change:
    """One value (or status) that differs between two reports."""

    scenario: str
    server: str
    request: int | None
    probe: str
    var: str
    before: Any
    after: Any


T = TypeVar("T")


def by_occurrence(items: Iterable[T], key: Callable[[T], tuple]) -> dict[tuple, T]:
    """Items keyed by `key(item)` plus the number of earlier items with that
    key: (request, probe, var, n) tells repeated probe runs apart."""
    counts: dict[tuple, int] = {}
    keyed: dict[tuple, T] = {}
    for item in items:
        base = key(item)
        counts[base] = counts.get(base, -1) + 1
        keyed[(*base, counts[base])] = item
    return keyed


def _values(entry: dict[str, Any]) -> dict[tuple, Any]:
    """A saved scenario's observed values, keyed by occurrence."""
    keyed = by_occurrence(entry["observations"], lambda o: (o.get("request"), o["probe"], o["var"]))
    return {key: o["observed"] for key, o in keyed.items()}


def runs(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A report's scenario results keyed by (name, server): with --server
    both each result names its server, otherwise the report does."""
    default = document.get("server", "asgi")
    return {(s["name"], s.get("server", default)): s for s in document["scenarios"]}


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """What changed from one report to another, scenario by scenario.

    Scenarios in `after` that `before` never ran are not changes.
    """
    now = runs(after)
    changes = []
    for (name, server), old in runs(before).items():
        new = now.get((name, server))
        if new is None:
            changes.append(Change(name, server, None, "-", "status", old.get("status"), "<not run>"))
            continue
        statuses = old.get("status"), new.get("status")
        if statuses[0] != statuses[1]:
            changes.append(Change(name, server, None, "-", "status", *statuses))
            if Status.SKIPPED in statuses:  # one side did not run: its values say nothing more
                continue
        old_values, new_values = _values(old), _values(new)
        for key in [*old_values, *(k for k in new_values if k not in old_values)]:
            was, now_is = old_values.get(key, "<absent>"), new_values.get(key, "<absent>")
            if not same(was, now_is):
                changes.append(Change(name, server, key[0], key[1], key[2], was, now_is))
    return changes


# -- CI formats ------------------------------------------------------------------------
# Characters XML 1.0 cannot hold, even escaped: a name or an app's
# exception message with a control character made a file no CI could parse.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """`text` with each character XML cannot hold spelled as Python does (\\x01)."""
    return _NOT_XML.sub(lambda found: repr(found.group())[1:-1], text)


def junit(report: Report) -> str:
    """JUnit XML: a testcase per scenario (and server); drift is a failure
    listing the differing rows, a crash is an error."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites")
    s = report.summary
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="ctxlab",
        tests=str(s["total"]),
        failures=str(s["drifted"]),
        errors=str(s["errors"]),
        skipped=str(s["skipped"]),
        time=f"{sum(r.duration_ms for r in report.scenarios) / 1000:.3f}",
    )
    for result in report.scenarios:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"ctxlab.{result.server}",
            name=_xml_text(result.name),
            time=f"{result.duration_ms / 1000:.3f}",
        )
        if result.status is Status.DRIFT:
            failure = ET.SubElement(case, "failure", message=f"{len(result.drifted)} observation(s) drifted")
            failure.text = _xml_text("\n".join(drift_line(o) for o in result.drifted))
        elif result.status is Status.ERROR:
            ET.SubElement(case, "error", message=_xml_text(result.error or "error"))
        elif result.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=_xml_text(result.error or "skipped"))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def github_annotations(report: Report) -> list[str]:
    """`::error` workflow commands for drift and errors (GitHub Actions)."""

    def escape(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    lines = []
    for result in report.scenarios:
        title = escape(f"ctxlab {result.status}: {result.name} ({result.server})")
        if result.status is Status.DRIFT:
            lines += [f"::error title={title}::{escape(drift_line(o))}" for o in result.drifted]
        elif result.status is Status.ERROR:
            lines.append(f"::error title={title}::{escape(result.error or '')}")
    return lines
