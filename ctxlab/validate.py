"""Checking a saved report (snapshot, baseline) field by field, so that a
file with a wrong type anywhere is one clear line (exit 2) and never a
crash or a drift (exit 1) half-way through `diff` or `check`."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from ctxlab.errors import CtxlabError
from ctxlab.limits import MAX_REQUESTS, SPEC_VERSION, TIMEOUT, encodes

STATUSES = ("pass", "drift", "error", "skipped")
# Read no file bigger than this: a snapshot of every scenario on every
# server is well under a megabyte, and json.loads of 200 MB takes gigabytes.
MAX_BYTES = 64 * 1024 * 1024


# Nest no deeper than this: Python's JSON parser, and everything that
# walks a document, recurses; a report's values are a few levels deep.
MAX_DEPTH = 200


def read_json(path: Path, what: str, unusable: type[CtxlabError], empty: str | None = None) -> Any:
    """The JSON document in `path` (`what` it should hold, for the message),
    read no further than MAX_BYTES: a device (`/dev/zero`) has no size to
    check first, and would be read for ever.  Anything that stops it raises
    `unusable`, in one line: a file that cannot be read, is not JSON (or is
    empty: `empty` says what to do then), is too large or nests too deep."""
    stdin = str(path) == "-"  # `ctxlab diff -`: read stdin, as Unix tools do
    if stdin:
        path = Path("stdin")  # as messages name it
    try:
        # closefd: stdin stays open for whatever reads it next.
        with open(sys.stdin.fileno() if stdin else path, "rb", closefd=not stdin) as stream:
            size = os.fstat(stream.fileno()).st_size
            data = stream.read(MAX_BYTES + 1) if size <= MAX_BYTES else b""
    except OSError as exc:
        raise unusable(f"cannot read {path}: {exc.strerror or exc}") from None
    if size > MAX_BYTES or len(data) > MAX_BYTES:
        shown = f"{size // 2**20} MiB" if size > MAX_BYTES else f"over {MAX_BYTES // 2**20} MiB"
        raise unusable(f"{path} is too large for {what} ({shown})")
    too_deep = unusable(f"{path} nests deeper than {MAX_DEPTH} levels; {what} never does")
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise unusable(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        if empty and not exc.doc.strip():
            raise unusable(f"{path} is empty; {empty}") from None
        raise unusable(f"{path} is not JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise too_deep from None
    if _deeper_than(document, MAX_DEPTH):
        raise too_deep
    return document


def _deeper_than(document: Any, limit: int) -> bool:
    pending = [(document, 1)]  # not recursive: that is the point
    while pending:
        value, depth = pending.pop()
        if depth > limit:
            return True
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending += [(item, depth + 1) for item in inner]
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# An HTTP token (RFC 9110 5.6.2): what a method or a header name may be made of.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def are(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    # A tuple too: scenario declarations are Python, not JSON.
    return lambda value: isinstance(value, (list, tuple)) and all(test(item) for item in value)


def _has(**tests: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: (
        isinstance(value, dict) and all(key in value and test(value[key]) for key, test in tests.items())
    )


def _is_finding(value: Any) -> bool:
    place = _has(file=is_str, function=is_str)
    return _has(kind=is_str, var=is_str, read=place)(value) and (value.get("set") is None or place(value["set"]))


# What `trace --baseline` and `diff` use of a saved trace, what each must
# be, and how to say it; a field's object is checked before its fields.
_TRACE_FIELDS = {
    "app": (is_str, "MODULE:ATTR"),
    "server": (lambda value: value in ("asgi", "uvicorn"), "asgi or uvicorn"),
    "options": (lambda value: isinstance(value, dict), "an object"),
    "options.requests": (lambda value: _is_int(value) and 1 <= value <= MAX_REQUESTS, "a number of requests"),
    "options.path": (
        lambda value: is_str(value) and value.startswith("/") and encodes(value, "utf-8"),
        "a path starting with /, in text a request can carry",
    ),
    "options.method": (lambda value: is_str(value) and TOKEN.fullmatch(value) is not None, "an HTTP method"),
    "options.headers": (
        are(
            lambda pair: (
                isinstance(pair, list)
                and len(pair) == 2
                and all(is_str(text) and encodes(text, "latin-1") for text in pair)
            )
        ),
        "a list of [name, value] pairs of Latin-1 text",
    ),
    "options.data": (lambda value: is_str(value) and encodes(value, "utf-8"), "a string a request can carry"),
    "options.lifespan": (_is_bool, "true or false"),
    "options.vars": (are(is_str), "a list of variable names"),
    "options.factory": (_is_bool, "true or false"),
    "options.app_dir": (is_str, "a directory"),
    "options.timeout": (
        lambda value: value is None or (_is_number(value) and TIMEOUT[0] <= value <= TIMEOUT[1]),
        "seconds",
    ),
    "events": (
        are(_has(request=_is_int, op=is_str, var=is_str, file=is_str, function=is_str, value=lambda value: True)),
        "a list of events (request, op, var, file, function, value)",
    ),
    "findings": (are(_is_finding), "a list of findings (kind, var, read and set with file and function)"),
}


def trace_problem(document: dict[str, Any]) -> str | None:
    """What is wrong with a saved trace's fields, in a few words; None if nothing."""
    for key, (valid, expected) in _TRACE_FIELDS.items():
        value: Any = document
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not valid(value):
            return f"{key} is {_shown(value)}, expected {expected}"
    return None


def problem(document: dict[str, Any], servers: Iterable[str]) -> str | None:
    """What is wrong with a report's fields, in a few words; None if nothing.

    `servers` are the servers this ctxlab can run on."""
    servers = tuple(servers)
    if "server" in document and document["server"] not in (*servers, "both"):
        return f"server is {_shown(document['server'])}, expected one of {', '.join((*servers, 'both'))}"
    spec = document.get("spec_version")
    if spec is not None and not (isinstance(spec, str) and SPEC_VERSION.fullmatch(spec)):
        return f'spec_version is {_shown(spec)}, expected null or MAJOR.MINOR such as "2.3"'
    environment = document.get("environment", {})
    if not isinstance(environment, dict):
        return f"environment is {_shown(environment)}, expected an object"
    packages = environment.get("packages", {})
    if not (isinstance(packages, dict) and all(isinstance(v, str) for v in packages.values())):
        return f"environment.packages is {_shown(packages)}, expected an object of package versions"
    scenarios = document.get("scenarios")
    # Empty, a baseline would compare nothing and pass: no snapshot is so.
    if not (isinstance(scenarios, list) and scenarios):
        return f"scenarios is {_shown(scenarios)}, expected a list of scenario results, one at least"
    seen = set()
    for i, scenario in enumerate(scenarios):
        where = f"scenarios[{i}]"
        if not isinstance(scenario, dict):
            return f"{where} is {_shown(scenario)}, expected an object"
        if not isinstance(scenario.get("name"), str):
            return f"{where}.name is {_shown(scenario.get('name'))}, expected a scenario name"
        # Compared by name and server, a second result would hide the first.
        run = (scenario["name"], scenario.get("server"))
        if run in seen:
            return f"{where} is a second result for {scenario['name']!r}" + (f" on {run[1]}" if run[1] else "")
        seen.add(run)
        if "status" in scenario and scenario["status"] not in STATUSES:
            return f"{where}.status is {_shown(scenario['status'])}, expected one of {', '.join(STATUSES)}"
        if "server" in scenario and scenario["server"] not in servers:
            return f"{where}.server is {_shown(scenario['server'])}, expected one of {', '.join(servers)}"
        if "server" not in scenario and document.get("server") == "both":
            # Keyed by the report's own server, "both", it would match no run.
            return f"{where}.server is missing: a report of server both names the server of each result"
        observations = scenario.get("observations")
        if not isinstance(observations, list):
            return f"{where}.observations is {_shown(observations)}, expected a list"
        for j, observation in enumerate(observations):
            at = f"{where}.observations[{j}]"
            if not isinstance(observation, dict) or "observed" not in observation:
                return f"{at} is not an observation (an object with probe, var and observed)"
            for key in ("probe", "var"):
                if not isinstance(observation.get(key), str):
                    return f"{at}.{key} is {_shown(observation.get(key))}, expected a string"
            for key in ("request", "seq"):
                if observation.get(key) is not None and not _is_int(observation[key]):
                    return f"{at}.{key} is {_shown(observation[key])}, expected a number or null"
    return None
