"""The command line: a thin layer over scenario, runner, report and render.

Importing this module must stay cheap and framework-free: `ctxlab list` and
`ctxlab --help` never import Starlette, FastAPI, httpx or uvicorn.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ctxlab import __version__

EXIT_CODES = """Exit codes: 0 all observations match expectations; 1 drift; 2 usage error;
3 a scenario crashed or timed out; 5 nothing selected."""

app = typer.Typer(
    help=f"Reproduce and observe the ways a ContextVar is lost or leaks in ASGI apps.\n\n{EXIT_CODES}",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: Rich-formatted help imports rich.markdown and markdown-it,
    # which would double the time `ctxlab --help` takes.
    rich_markup_mode=None,
)


class UsageError(Exception):
    """Bad input: one line on stderr, exit 2."""


class Server(str, Enum):
    asgi = "asgi"
    uvicorn = "uvicorn"
    both = "both"

    @property
    def runs_on(self) -> list[str]:
        return ["asgi", "uvicorn"] if self is Server.both else [self.value]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _version_callback(value: bool) -> None:
    if not value:
        return
    from ctxlab.report import environment

    env = environment()
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items())
    typer.echo(f"ctxlab {__version__} (Python {env['python']}; {packages})")
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Tool and framework versions."),
    ] = None,
) -> None:
    pass


ScenariosOption = Annotated[
    Optional[List[Path]], typer.Option("--scenarios", help="Also load scenarios from this directory.")
]


def _entries(directories=None):
    from ctxlab.scenario import ScenarioError, catalog

    try:
        return catalog(*(directories or []))
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None


def _tagged(entries, tags: list[str], catalog=None) -> list:
    """The entries with any of `tags` (all of them when no tag is given);
    a tag no scenario in `catalog` (default: `entries`) has is a usage error."""
    known = sorted({tag for entry in (catalog or entries) for tag in entry.tags})
    for tag in tags:
        if tag not in known:
            raise UsageError(f"unknown tag {tag!r}; known tags: {', '.join(known)}")
    return [entry for entry in entries if not tags or set(tags) & set(entry.tags)]


def select(names: list[str], all_: bool, tags: list[str], directories=None):
    """The catalog entries a command line asks for, in the order asked."""
    entries = _entries(directories)
    if names and all_:
        raise UsageError("give scenario names or --all, not both")
    if not (names or all_ or tags):
        raise UsageError("name a scenario, or use --all or --tag (see 'ctxlab list')")
    for name in names:
        if name not in entries:
            from ctxlab.scenario import suggest

            raise UsageError(f"unknown scenario {name!r}{suggest(name, entries)}")
    chosen = [entries[name] for name in dict.fromkeys(names)] if names else list(entries.values())
    return _tagged(chosen, tags, catalog=list(entries.values()))


def _writable(path: Optional[Path]) -> None:
    """Refuse an output path before the run, not after it."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: {parent} is not a writable directory")


def write_atomically(path: Path, text: str) -> None:
    """Write all of `text` or leave `path` as it was."""
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", dir=path.parent or ".", prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(text)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def run_entry(entry, server: str, spec_version: Optional[str], concurrency: Optional[int] = None):
    """Load, run and compare one catalog entry: a ScenarioReport."""
    from ctxlab import report, runner
    from ctxlab.scenario import Env, load

    if server not in entry.servers:
        return report.skipped(entry.name, f"runs only on {', '.join(entry.servers)}", server)
    try:
        scenario = load(entry)
    except Exception as exc:  # noqa: BLE001 - a broken module is that scenario's error
        return report.ScenarioReport(entry.name, "error", error=f"cannot load: {type(exc).__name__}: {exc}", server=server)
    unmet = scenario.unmet_requirement(Env(server, spec_version, None))
    if unmet:
        return report.skipped(entry.name, unmet, server)
    # --concurrency only applies to scenarios built for it
    ran = runner.run(scenario, server, spec_version, concurrency if scenario.concurrency else None)
    return report.compare(scenario, ran, server, spec_version)


def execute(entries, server: "Server", spec_version: Optional[str], concurrency: Optional[int] = None, progress=None):
    """Run the entries one by one, on each server asked for; Ctrl-C keeps
    what has finished."""
    from ctxlab.report import Report

    results = Report([], server=server.value, spec_version=spec_version)
    try:
        for entry in entries:
            outcomes = [run_entry(entry, name, spec_version, concurrency) for name in server.runs_on]
            results.scenarios.extend(outcomes)
            if progress:
                progress(entry, outcomes)
    except KeyboardInterrupt:
        results.interrupted = True
    return results


@app.command("list")
def list_(
    tag: Annotated[Optional[List[str]], typer.Option("--tag", help="Only scenarios with this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """The catalog: name, tags, one-line summary."""
    entries = _tagged(list(_entries(scenarios).values()), tag or [])
    if as_json:
        rows = [{"name": e.name, "tags": list(e.tags), "summary": e.summary, "servers": list(e.servers)} for e in entries]
        typer.echo(json.dumps(rows, indent=2))
    else:
        from ctxlab import render

        render.catalog(entries, _console())
    return 0


SPEC_VERSION = re.compile(r"^\d+\.\d+$")


@app.command()
def run(
    names: Annotated[Optional[List[str]], typer.Argument(help="Scenario names (see 'ctxlab list').", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every scenario.")] = False,
    tag: Annotated[Optional[List[str]], typer.Option("--tag", help="Scenarios with this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The JSON report on stdout.")] = False,
    server: Annotated[Server, typer.Option(help="How requests reach the app.")] = Server.asgi,
    spec_version: Annotated[
        Optional[str], typer.Option("--spec-version", help="ASGI spec_version to advertise, e.g. 2.4.")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Also write the JSON report here.")] = None,
    concurrency: Annotated[
        Optional[int], typer.Option(min=1, max=10000, help="Concurrent requests, for scenarios that send them.")
    ] = None,
    scenarios: ScenariosOption = None,
) -> int:
    """Run scenarios and compare what each probe saw with what is expected."""
    if spec_version is not None and not SPEC_VERSION.match(spec_version):
        raise UsageError(f"bad --spec-version {spec_version!r}; expected MAJOR.MINOR such as 2.3 or 2.4")
    if spec_version is not None and server is not Server.asgi:
        raise UsageError("--spec-version applies to --server asgi only; a real server advertises its own")
    entries = select(names or [], all_, tag or [], scenarios)
    _writable(output)
    if not entries:
        _console(stderr=True).print("nothing selected: no scenario has all of that")
        return 5
    from ctxlab import render

    console = _console()
    started = time.perf_counter()
    show = None if as_json else (lambda entry, outcomes: render.outcomes(entry, outcomes, console))
    results = execute(entries, server, spec_version, concurrency, show)
    # Only the JSON forms need the document (and its package-version look-ups).
    document = json.dumps(results.to_json(), indent=2) if as_json or output is not None else ""
    if output is not None and results.interrupted:
        # A file missing scenarios would read as a complete report later.
        _console(stderr=True).print(f"interrupted: {output} not written")
    elif output is not None:
        write_atomically(output, document + "\n")
    if as_json:
        typer.echo(document)
    else:
        console.print(render.summary_line(results, time.perf_counter() - started))
    return results.exit_code


@app.command()
def explain(
    name: Annotated[str, typer.Argument(help="A scenario name.")],
    server: Annotated[Server, typer.Option(help="Where to run it for the task tree (not both).")] = Server.asgi,
    scenarios: ScenariosOption = None,
) -> int:
    """The story of one scenario: onion, task tree, why, the fix, the source."""
    if server is Server.both:
        raise UsageError("explain runs on one server: --server asgi or --server uvicorn")
    entry = select([name], False, [], scenarios)[0]
    from ctxlab import render
    from ctxlab.scenario import load

    result = run_entry(entry, server.value, None)
    render.explain(load(entry), result, entry.path.read_text(encoding="utf-8"), _console())
    return 0


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help="A scenario name.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free one).")] = 8000,
    scenarios: ScenariosOption = None,
) -> int:
    """Serve a scenario's app with uvicorn on 127.0.0.1 for curl, printing
    probe rows as requests arrive; Ctrl-C stops it."""
    entry = select([name], False, [], scenarios)[0]
    if "uvicorn" not in entry.servers:
        raise UsageError(f"{name!r} runs only in process (--server asgi); it cannot be served")
    from ctxlab import render, runner
    from ctxlab.scenario import load
    from ctxlab.servers import ServerFailed

    scenario = load(entry)
    console, labels = _console(), render.LiveLabels()

    def ready(url: str) -> None:
        first = scenario.requests[0]
        console.print(f"serving {name} on {url} (Ctrl-C to stop); try: curl -X {first.method} {url}{first.path}")

    try:
        runner.serve(scenario, port, ready, lambda record: console.print(labels.line(record)))
    except ServerFailed as exc:
        raise UsageError(f"cannot serve on 127.0.0.1:{port}: {exc}") from None
    except KeyboardInterrupt:
        console.print("stopped")
    return 0


def _is_saved_trace(path: Path) -> bool:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # the snapshot reader reports what is wrong with it
    return isinstance(document, dict) and "events" in document and "options" in document


def _baseline(path: Optional[Path]):
    if path is None:
        return None
    from ctxlab.report import ReportFileError, load_report

    try:
        return load_report(path)
    except ReportFileError as exc:
        raise UsageError(str(exc)) from None


@app.command()
def check(
    server: Annotated[Server, typer.Option(help="How requests reach the app.")] = Server.asgi,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here.")] = None,
    baseline: Annotated[
        Optional[Path], typer.Option("--baseline", help="Also fail when observations differ from this snapshot.")
    ] = None,
    scenarios: ScenariosOption = None,
) -> int:
    """CI mode: every scenario, a line each, details only for failures."""
    before = _baseline(baseline)
    _writable(junit)
    from rich.text import Text

    from ctxlab import render, report

    console = _console()
    started = time.perf_counter()
    results = execute(list(_entries(scenarios).values()), server, None, None,
                      lambda entry, outcomes: render.check_line(entry, outcomes, console))  # fmt: skip
    if junit is not None:
        write_atomically(junit, report.junit(results))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in report.github_annotations(results):
            print(line)
    code = results.exit_code
    if before is not None:
        kept = [s for (_, ran_on), s in report.runs(before).items() if ran_on in server.runs_on]
        if len(kept) < len(before["scenarios"]):
            console.print(Text(f"baseline: {len(before['scenarios']) - len(kept)} runs on other servers not "
                               f"compared (see --server)", style="dim"))  # fmt: skip
        found = report.diff({**before, "scenarios": kept}, results.to_json())
        render.changes(found, before.get("environment", {}), report.environment(), console)
        if found and code in (0, 5):
            code = 1
    console.print(render.summary_line(results, time.perf_counter() - started))
    return code


@app.command()
def snapshot(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the snapshot (JSON).")],
    server: Annotated[Server, typer.Option(help="Record in process, on uvicorn, or both.")] = Server.both,
    scenarios: ScenariosOption = None,
) -> int:
    """Save every scenario's observations in this environment, for `diff`."""
    _writable(output)
    results = execute(list(_entries(scenarios).values()), server, None)
    if results.interrupted:
        return 130  # a partial snapshot would diff as removals: write none
    write_atomically(output, json.dumps(results.to_json(), indent=2) + "\n")
    s = results.summary
    _console(stderr=True).print(f"wrote {output}: {s['total']} scenario runs ({s['passed']} passed, "
                                f"{s['drifted']} drifted, {s['errors']} errors, {s['skipped']} skipped)")  # fmt: skip
    return 3 if s["errors"] else 0


@app.command()
def diff(
    snapshot_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A snapshot from 'ctxlab snapshot', or a trace saved with -o.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="The changes as JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """Run the snapshot's scenarios now (or trace a saved trace's app again)
    and show what changed against it."""
    if _is_saved_trace(snapshot_file):
        return _diff_trace(snapshot_file, as_json)
    before = _baseline(snapshot_file)
    from ctxlab import render, report

    entries = _entries(scenarios)
    names = list(dict.fromkeys(s["name"] for s in before["scenarios"]))
    servers = {ran_on for _, ran_on in report.runs(before)}
    server = Server.both if len(servers) > 1 else Server(servers.pop() if servers else "asgi")
    results = execute([entries[n] for n in names if n in entries], server, before.get("spec_version"))
    if results.interrupted:
        return 130
    found = report.diff(before, results.to_json())
    after_env = report.environment()
    if as_json:
        changes = [vars(c) for c in found]
        typer.echo(json.dumps({"schema_version": 1, "before": before.get("environment", {}),
                               "after": after_env, "changes": changes}, indent=2))  # fmt: skip
    else:
        render.changes(found, before.get("environment", {}), after_env, _console())
    return 1 if found else 0


@app.command()
def matrix(
    with_: Annotated[
        List[str],
        typer.Option("--with", help="One column: requirements separated by spaces, e.g. 'starlette==0.41.3 uvicorn==0.44.0'."),
    ],
    server: Annotated[Server, typer.Option(help="How requests reach the app, in every column.")] = Server.both,
    as_json: Annotated[bool, typer.Option("--json", help="The grid as JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """The same scenarios across framework versions: a scenario x environment grid."""
    from ctxlab import matrix as matrices
    from ctxlab import render

    extra = [arg for directory in scenarios or [] for arg in ("--scenarios", str(directory.resolve()))]
    try:
        columns = [matrices.parse_column(text) for text in with_]
        if len(columns) < 2:
            raise matrices.MatrixError("give at least two --with columns to compare")
        for column in columns:
            matrices.environment(column, progress=lambda line: _console(stderr=True).print(line))
            column.report = matrices.run_column(column, server.value, extra)
    except matrices.MatrixError as exc:
        raise UsageError(str(exc)) from None
    result = matrices.grid(columns)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        render.matrix(result, _console())
    return 0


@app.command("probe")
def probe_app(
    target: Annotated[str, typer.Argument(metavar="MODULE:ATTR", help="Your app, e.g. myapp.main:app.")],
    factory: Annotated[bool, typer.Option("--factory", help="ATTR is a function that returns the app.")] = False,
    app_dir: Annotated[Path, typer.Option("--app-dir", help="Where to import MODULE from.")] = Path("."),
    path: Annotated[
        Optional[str], typer.Option("--path", help="Probe through this route of yours instead of a probe route.")
    ] = None,
    method: Annotated[str, typer.Option("--method", help="HTTP method for --path.")] = "GET",
    lifespan: Annotated[bool, typer.Option("--lifespan", help="Run the app's lifespan around the request.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The diagnosis as JSON on stdout.")] = False,
) -> int:
    """Diagnose your own Starlette/FastAPI app: which middleware layers see
    values set in the endpoint, which cut them, and why. Your app is not changed."""
    if path is not None and not path.startswith("/"):
        raise UsageError(f"--path must start with '/', got {path!r}")
    from ctxlab import render
    from ctxlab.diagnose import DiagnoseError, diagnose

    try:
        result = diagnose(target, factory=factory, app_dir=app_dir, path=path, method=method.upper(), lifespan=lifespan)
    except DiagnoseError as exc:
        raise UsageError(str(exc)) from None
    if path is not None and result.status >= 400:
        print(f"ctxlab: note: {method.upper()} {path} answered {result.status}; the layers were still probed", file=sys.stderr)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        render.diagnosis(result, _console())
    return 0 if not result.culprits else 1


@app.command("trace")
def trace_app(
    target: Annotated[str, typer.Argument(metavar="MODULE:ATTR", help="Your app, e.g. myapp.main:app.")],
    requests: Annotated[int, typer.Option("--requests", min=1, help="How many requests, one after another.")] = 2,
    path: Annotated[str, typer.Option("--path", help="The path each request asks for.")] = "/",
    method: Annotated[str, typer.Option("--method", help="The HTTP method.")] = "GET",
    header: Annotated[Optional[List[str]], typer.Option("--header", help="A request header, K:V (repeatable).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="The request body.")] = None,
    server: Annotated[Server, typer.Option(help="In process (asgi) or a real uvicorn.")] = Server.asgi,
    lifespan: Annotated[bool, typer.Option("--lifespan", help="Run the app's lifespan around the requests.")] = False,
    var: Annotated[Optional[List[str]], typer.Option("--var", help="Only this variable (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Events and findings as JSON on stdout.")] = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Also save the JSON here (for diff).")] = None,
    baseline: Annotated[
        Optional[Path], typer.Option("--baseline", help="Also fail when the trace differs from this saved one.")
    ] = None,
    factory: Annotated[bool, typer.Option("--factory", help="ATTR is a function that returns the app.")] = False,
    app_dir: Annotated[Path, typer.Option("--app-dir", help="Where to import MODULE from.")] = Path("."),
) -> int:
    """Follow your own ContextVars through real requests: every get, set and
    reset at file:line, and each value lost or leaked, with the fix.
    Exit 0 no finding, 1 findings (or changes against --baseline), 2 usage error."""
    if not path.startswith("/"):
        raise UsageError(f"--path must start with '/', got {path!r}")
    if server is Server.both:
        raise UsageError("--server both is not available for trace; choose asgi or uvicorn")
    headers = []
    for item in header or []:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header expects K:V such as 'x-user:1', got {item!r}")
        headers.append((name.strip(), value.strip()))
    _writable(output)
    from ctxlab import render
    from ctxlab import trace as tracing
    from ctxlab.target import TargetError

    try:
        before = tracing.load_trace(baseline) if baseline is not None else None
        result = tracing.trace(
            target, requests=requests, path=path, method=method.upper(), headers=headers,
            data=(data or "").encode(), server=server.value, lifespan=lifespan, variables=var or [],
            factory=factory, app_dir=app_dir,
        )  # fmt: skip
    except (TargetError, tracing.TraceFileError) as exc:
        raise UsageError(str(exc)) from None
    document = result.to_json()
    if output is not None:
        write_atomically(output, json.dumps(document, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        render.trace_report(result, _console())
    code = 1 if result.findings else 0
    if before is not None:
        found = tracing.changes(before, document)
        render.trace_changes(found, _console(stderr=as_json))
        code = 1 if found else code
    return code


def _diff_trace(path: Path, as_json: bool) -> int:
    """`ctxlab diff` of a saved trace: trace the app again, show what changed."""
    from ctxlab import render
    from ctxlab import trace as tracing
    from ctxlab.target import TargetError

    try:
        before = tracing.load_trace(path)
        after = tracing.again(before).to_json()
    except (TargetError, tracing.TraceFileError) as exc:
        raise UsageError(str(exc)) from None
    found = tracing.changes(before, after)
    if as_json:
        typer.echo(json.dumps({"schema_version": 1, "app": before["app"], "changes": [vars(c) for c in found]}, indent=2))
    else:
        render.trace_changes(found, _console())
    return 1 if found else 0


def _is_click_error(exc: Exception) -> bool:
    # Typer may bring its own copy of click, so match the interface.
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        print(f"ctxlab: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        if type(exc).__name__ == "Abort":
            code = 130
        else:
            print(f"ctxlab: error: {exc.format_message()}", file=sys.stderr)
            code = exc.exit_code
    sys.exit(code or 0)
