"""Scenarios: what they are, how expectations are written, where they live.

A scenario is a function that builds an ASGI app, decorated with
`@scenario(...)`.  Its name, tags and summary must be literals: `ctxlab list`
reads them from the source with `ast`, without importing the module, so that
listing never pays for (or depends on) importing a web framework.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import stat
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ctxlab.config import RunConfig
from ctxlab.errors import ScenarioError
from ctxlab.limits import TIMEOUT
from ctxlab.validate import are, is_str

__all__ = ["ClientRequest", "Env", "Varies", "by_flag", "by_server", "by_version", "per_request", "scenario"]

Servers = ("asgi", "uvicorn", "hypercorn", "granian")
# The ASGI spec_version each server puts in its http scopes (none in process).
ADVERTISED_SPEC = {"uvicorn": "2.3", "hypercorn": "2.1", "granian": "2.3"}
DEFAULT_TIMEOUT = 10.0  # seconds a scenario may run, unless it says otherwise


# -- requests -------------------------------------------------------------
@dataclass(frozen=True)
class ClientRequest:
    """One request a scenario sends, and the status it must be answered with."""

    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    status: int = 200  # any other answer means the scenario is broken


# -- expectations -------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    """What an expectation may depend on: the run's settings and the request."""

    server: str
    spec_version: str | None
    request: int | None
    concurrency: int | None = None
    loop: str = "asyncio"  # the event loop the run used: asyncio or uvloop
    http: str | None = None  # uvicorn's parser (h11 or httptools); None elsewhere

    @classmethod
    def of(cls, config: RunConfig, request: int | None = None) -> Env:
        """The Env of `request` (None: outside any request) in a run with `config`."""
        return cls(
            config.server, config.spec_version, request, config.concurrency, config.loop or "asyncio", config.http
        )

    def version(self, package: str) -> str:
        """The installed version of `package` ("0" when it is not installed)."""
        return package_version(package)

    def has(self, package: str, spec: str) -> bool:
        """`env.has("starlette", ">=0.42")`: is the installed version in range?"""
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(spec).contains(self.version(package), prereleases=True)

    def spec_at_least(self, version: str) -> bool:
        """Does the run advertise an ASGI spec_version of at least `version`?"""
        advertised = self.spec_version or ADVERTISED_SPEC.get(self.server, "2.0")
        return tuple(map(int, advertised.split("."))) >= tuple(map(int, version.split(".")))


@cache
def package_version(package: str) -> str:
    """The installed version of `package`, "0" when it is not installed."""
    from importlib import metadata  # 30 ms of imports: not for `ctxlab list`

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "0"


class Varies:
    """An expected value that depends on the environment of the run."""

    def __init__(self, describe: str, choose: Callable[[Env], Any]) -> None:
        self.describe = describe
        self.choose = choose

    def resolve(self, env: Env) -> Any:
        return resolve(self.choose(env), env)

    def __repr__(self) -> str:
        return self.describe


def describe(value: Any) -> str:
    """An expected value as reports show it (JSON, or how it varies)."""
    if isinstance(value, Varies):
        return value.describe
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def resolve(value: Any, env: Env) -> Any:
    """An expected value for `env`: a Varies chooses, anything else is itself."""
    return value.resolve(env) if isinstance(value, Varies) else value


def by_version(package: str, cases: Mapping[str, Any]) -> Varies:
    """`by_version("uvicorn", {"<0.45": a, ">=0.45": b})`."""
    from packaging.specifiers import SpecifierSet  # only runs need it, not `list`

    specs = [(SpecifierSet(spec), value) for spec, value in cases.items()]

    def choose(env: Env) -> Any:
        installed = env.version(package)
        for spec, value in specs:
            if spec.contains(installed, prereleases=True):
                return value
        raise ScenarioError(f"no expectation for {package} {installed} (cases: {', '.join(cases)})")

    return Varies("; ".join(f"{package}{spec}: {describe(v)}" for spec, v in cases.items()), choose)


def by_server(**cases: Any) -> Varies:
    """`by_server(asgi=a, uvicorn=b)`."""

    def choose(env: Env) -> Any:
        if env.server not in cases:
            raise ScenarioError(f"no expectation for server {env.server} (cases: {', '.join(cases)})")
        return cases[env.server]

    return Varies("; ".join(f"on {s}: {describe(v)}" for s, v in cases.items()), choose)


def by_flag(flag: str, *, on: Any, off: Any) -> Varies:
    """`by_flag("thread_inherit_context", on=a, off=b)`: follows `sys.flags.<flag>`
    of the running Python (off where this Python has no such flag)."""
    return Varies(
        f"with sys.flags.{flag}: {describe(on)}; without: {describe(off)}",
        lambda env: on if getattr(sys.flags, flag, 0) else off,
    )


def per_request(*values: Any) -> Varies:
    """The expected value for request 1, 2, ...; the last one repeats."""
    last = len(values)
    return Varies(
        "; ".join(f"request {n}{'+' if n == last else ''}: ({describe(v)})" for n, v in enumerate(values, 1)),
        lambda env: values[min(env.request or 1, last) - 1],
    )


# -- the scenario ---------------------------------------------------------------
Expectations = Mapping[str, Mapping[str, Any]]  # probe -> var -> value


@dataclass
class Scenario:
    """A scenario as `@scenario` declares it: the app factory, the requests to
    send it, what each probe should see, and how to run it."""

    name: str
    summary: str
    build: Callable[[], Any]
    expect: Expectations
    naive: Expectations = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    requests: tuple[ClientRequest, ...] = (ClientRequest(),)
    concurrent: bool = False
    # False reproduces httpx.ASGITransport used bare: the app runs inline in
    # the caller's task, so every request shares one context.
    task_per_request: bool = True
    lifespan: bool = False  # run startup/shutdown around the requests
    # Write all requests on one connection before reading (uvicorn only;
    # in process they are simply sent one after another).
    pipelined: bool = False
    server_options: Mapping[str, Any] = field(default_factory=dict)  # uvicorn.Config(**options)
    requires: Mapping[str, str] = field(default_factory=dict)  # {"uvicorn": ">=0.45"}, else skipped
    # Send this many copies of the first request at once; the app factory
    # receives the number (`--concurrency` overrides it).
    concurrency: int | None = None
    servers: tuple[str, ...] = Servers
    why: str = ""
    fix: str = ""
    source: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        # A module of the user's declares these: a wrong one is said here,
        # as its module imports (the scenario's error), not met later as a
        # traceback of ctxlab's.
        wrong = _declaration_problem(self)
        if wrong:
            raise ScenarioError(f"scenario {self.name!r}: {wrong}")

    def settle(self, config: RunConfig) -> RunConfig:
        """The config this scenario runs with: `concurrency` applies only to
        scenarios built for it, which otherwise send their own number."""
        concurrency = (config.concurrency or self.concurrency) if self.concurrency else None
        return dataclasses.replace(config, concurrency=concurrency)

    def unmet_requirement(self, env: Env) -> str | None:
        """Why this scenario cannot run here (a package version), or None."""
        for package, spec in self.requires.items():
            if not env.has(package, spec):
                return f"needs {package}{spec}, found {env.version(package)}"
        return None

    def expected(self, probe: str, var: str, env: Env) -> Any:
        """What `probe` should see in `var` under `env`."""
        return resolve(self.expect[probe][var], env)

    def naive_value(self, probe: str, var: str, env: Env) -> Any:
        """What a naive reading expects there (the expectation, unless stated)."""
        if var in self.naive.get(probe, {}):
            return resolve(self.naive[probe][var], env)
        return self.expected(probe, var, env)


def _declaration_problem(scenario: Scenario) -> str | None:
    """What is wrong with what a scenario declares beyond its literals
    (those are checked as the catalog reads them), or None."""
    for key in ("expect", "naive"):
        table = getattr(scenario, key)
        if not (isinstance(table, Mapping) and all(isinstance(v, Mapping) for v in table.values())):
            return f"{key} must map each probe label to {{variable name: value}}, not {table!r}"
    requests = scenario.requests
    if not (isinstance(requests, (list, tuple)) and requests and all(isinstance(r, ClientRequest) for r in requests)):
        return f"requests must be a list of ClientRequest, one at least, not {requests!r}"
    if scenario.concurrency is not None and not (type(scenario.concurrency) is int and scenario.concurrency >= 1):
        return f"concurrency must be a number of requests, not {scenario.concurrency!r}"
    if not _is_seconds(scenario.timeout):
        return f"timeout must be seconds, more than 0 and at most {TIMEOUT[1]:g}, not {scenario.timeout!r}"
    if not are(Servers.__contains__)(scenario.servers):
        return f"servers must be a list of {', '.join(Servers)}, not {scenario.servers!r}"
    for key in ("concurrent", "task_per_request", "lifespan", "pipelined"):
        if type(getattr(scenario, key)) is not bool:
            return f"{key} must be True or False, not {getattr(scenario, key)!r}"
    for key in ("why", "fix"):
        if not isinstance(getattr(scenario, key), str):
            return f"{key} must be a string, not {getattr(scenario, key)!r}"
    if not (isinstance(scenario.server_options, Mapping) and all(map(is_str, scenario.server_options))):
        return f"server_options must map uvicorn.Config's arguments to values, not {scenario.server_options!r}"
    return _requirement_problem(scenario.requires)


def _requirement_problem(requires: Any) -> str | None:
    wanted = "requires must map package names to versions, such as {'uvicorn': '>=0.45'}"
    if not (isinstance(requires, Mapping) and all(map(is_str, requires)) and all(map(is_str, requires.values()))):
        return f"{wanted}, not {requires!r}"
    if not requires:
        return None  # most scenarios: packaging stays unimported, as for `list`
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    for package, spec in requires.items():
        try:
            SpecifierSet(spec)
        except InvalidSpecifier:
            return f"{wanted}; {package!r}: {spec!r} is not a version specifier"
    return None


_declared: list[Scenario] = []


def scenario(
    name: str, *, summary: str, expect: Expectations, tags: Iterable[str] = (), **options: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the decorated app factory as a scenario."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        _declared.append(Scenario(name=name, summary=summary, build=build, expect=expect, tags=tuple(tags), **options))
        return build

    return register


# -- discovery without importing --------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """What `ctxlab list` shows, read from the source."""

    name: str
    summary: str
    tags: tuple[str, ...]
    path: Path
    servers: tuple[str, ...] = Servers
    timeout: float = DEFAULT_TIMEOUT  # as declared, when a literal
    imports: tuple[str, ...] = ()  # the modules its module imports (as it loads or in functions)


def bundled_dir() -> Path:
    """Where the bundled scenarios are, installed or in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "scenarios"  # in a wheel the scenarios ride inside
    return installed if installed.is_dir() else package.parent / "scenarios"


def _literal(node: ast.expr, what: str, path: Path, valid: Callable[[Any], bool], expected: str) -> Any:
    """The literal `node` holds, if `valid`: else one line saying what it
    must be (a wrong type was a traceback in `ctxlab list`)."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise ScenarioError(f"{path.name}:{node.lineno}: the scenario's {what} must be a literal") from None
    if not valid(value):
        raise ScenarioError(f"{path.name}:{node.lineno}: the scenario's {what} must be {expected}, not {value!r}")
    return value


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


def _is_name(value: Any) -> bool:
    # Typed on command lines, and listed in columns split at spaces.
    return isinstance(value, str) and value != "" and all(c.isprintable() and not c.isspace() for c in value)


def _is_seconds(value: Any) -> bool:
    return type(value) in (int, float) and 0 < value <= TIMEOUT[1]


def read_entries(path: Path) -> list[Entry]:
    """The scenarios declared in one module, found by reading its source."""
    return [_entry(path, fields) for fields in _declared_fields(path)]


def _entry(path: Path, fields: dict[str, Any]) -> Entry:
    tuples = {key: tuple(fields[key]) for key in ("tags", "servers", "imports") if key in fields}
    return Entry(path=path, **{**fields, **tuples})


def read_source(path: Path) -> str:
    """A module's source as Python reads it: in the encoding its PEP 263
    coding line names, or UTF-8 with or without a byte order mark."""
    import importlib.util

    return importlib.util.decode_source(path.read_bytes())


def _declared_fields(path: Path) -> list[dict[str, Any]]:
    """Each `@scenario(...)` call's literal fields in one module (JSON-ready:
    the catalog index stores them)."""
    try:
        tree = ast.parse(read_source(path), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenarios from {path}: {exc}") from None
    # What the module imports, as it loads or in its functions: a run
    # imports the bundled modules' libraries before it forks its worker
    # (engine.prepared_worker).
    nodes = list(ast.walk(tree))
    imports = sorted(
        {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        | {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    )
    declared = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "scenario"):
            continue
        if len(node.args) != 1:  # scenario(name, *, ...): a second one fails as the module imports
            raise ScenarioError(f"{path.name}:{node.lineno}: @scenario needs the name first, the rest by keyword")
        declared.append({**_fields_of(node, path), "imports": imports})
    return declared


def _fields_of(call: ast.Call, path: Path) -> dict[str, Any]:
    """One `@scenario(...)` call's literal fields, each checked."""
    keywords = {k.arg: k.value for k in call.keywords}

    def declared(key: str, valid: Callable[[Any], bool], expected: str) -> Any:
        return _literal(keywords[key], key, path, valid, expected)

    fields = {
        "name": _literal(call.args[0], "name", path, _is_name, "text without spaces, such as 'my-tenant'"),
        "summary": declared("summary", is_str, "a string") if "summary" in keywords else "",
        "tags": list(declared("tags", are(is_str), "a list of strings")) if "tags" in keywords else [],
    }
    if "servers" in keywords:
        fields["servers"] = list(declared("servers", are(Servers.__contains__), f"a list of {', '.join(Servers)}"))
    # How long importing the module may take (engine.run_guarded), when a
    # literal says it (Scenario checks any other as the module imports).
    if "timeout" in keywords and _is_literal(keywords["timeout"]):
        fields["timeout"] = declared("timeout", _is_seconds, f"seconds, more than 0 and at most {TIMEOUT[1]:g}")
    return fields


def catalog(*extra: Path) -> dict[str, Entry]:
    """Bundled scenarios, those of installed plugins (the `ctxlab.scenarios`
    entry-point group), then those in `extra` directories; names are unique.

    Modules unchanged since they were last read come from the catalog index
    (ctxlab.index), not from parsing their source again."""
    from ctxlab.index import Index

    for directory in extra:
        why = not_a_directory(directory)
        if why:
            raise ScenarioError(f"scenario directory {directory} {why}")
    index = Index()
    found: dict[str, Entry] = {}
    try:
        plugins = index.plugins(plugin_modules)
        # A directory given twice (`--scenarios x --scenarios ./x`), or the
        # bundled one again, is read once.
        directories = {directory.resolve(): directory for directory in extra}
        directories.pop(bundled_dir().resolve(), None)
        for path in [*_modules_in(bundled_dir()), *plugins]:
            _add(found, path, index.entries(path, _declared_fields))
        for directory in directories.values():
            # A directory that declares nothing is most likely the wrong one
            # (its parent, a package's top): say so rather than run without it.
            declared = [(path, index.entries(path, _declared_fields)) for path in _modules_in(directory)]
            if not any(fields for _, fields in declared):
                raise ScenarioError(
                    f"scenario directory {directory} declares no scenario (no @scenario in its *.py files)"
                )
            for path, fields in declared:
                _add(found, path, fields)
    finally:
        index.save()  # what was read stays read, even when a name clashes
    return found


def _add(found: dict[str, Entry], path: Path, declared: list[dict]) -> None:
    for fields in declared:
        entry = _entry(path, fields)
        if entry.name in found:
            raise ScenarioError(
                f"scenario {entry.name!r} is declared twice: {found[entry.name].path.name} and {path.name}"
            )
        found[entry.name] = entry


def not_a_directory(path: Path) -> str | None:
    """Why `path` is no directory to read, in a few words; None if it is one.
    Not Path.is_dir(): it answers a name too long with False on 3.13 and
    raises on 3.11, where this says what the system said."""
    try:
        return None if stat.S_ISDIR(path.stat().st_mode) else "is not a directory"
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"


def _modules_in(directory: Path) -> list[Path]:
    modules = [path for path in sorted(directory.glob("*.py")) if not path.name.startswith("_")]
    for path in modules:
        # A link to a module since moved: passed by, its scenarios would
        # only be "unknown".
        if path.is_symlink() and not path.exists():
            raise ScenarioError(f"scenario module {path} is a symlink to {path.readlink()}, which does not exist")
    # Regular files only: a FIFO named x.py would be waited on for ever.
    return [path for path in modules if path.is_file()]


ENTRY_POINT_GROUP = "ctxlab.scenarios"


def plugin_modules() -> list[Path]:
    """Files of the modules (or packages) that plugins name, found without
    importing them."""
    import importlib.util
    from importlib.metadata import entry_points

    paths = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = importlib.util.find_spec(point.value)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            raise ScenarioError(f"entry point {point.name} = {point.value!r} ({ENTRY_POINT_GROUP}) names no module")
        origin = Path(spec.origin)
        paths += _modules_in(origin.parent) if spec.submodule_search_locations else [origin]
    return paths


def suggest(name: str, known: Iterable[str], otherwise: str = "; see 'ctxlab list'") -> str:
    """`; did you mean 'x'?` for the closest known name, else `otherwise`."""
    import difflib

    # Compared folded: `BAD-THEN-SHINY` is too far from its name for difflib.
    by_folded = {known_name.casefold(): known_name for known_name in known}
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1)
    return f"; did you mean {by_folded[close[0]]!r}?" if close else otherwise


# -- loading ---------------------------------------------------------------------
_loaded: dict[Path, list[Scenario]] = {}


def load(entry: Entry) -> Scenario:
    """Import the entry's module (once) and return its Scenario."""
    import importlib.util

    path = entry.path
    if path not in _loaded:
        module_name = f"ctxlab_scenario_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        start = len(_declared)
        spec.loader.exec_module(module)
        _loaded[path] = _declared[start:]
        for declared in _loaded[path]:
            declared.source = path
    for declared in _loaded[path]:
        if declared.name == entry.name:
            return declared
    raise ScenarioError(f"{path.name} lists {entry.name!r} but does not declare it with @scenario")
