"""The command line: parses options, calls ctxlab.engine, prints through ctxlab.output.

Importing this module must stay cheap and framework-free: `ctxlab list` and
`ctxlab --help` never import Starlette, FastAPI, httpx or uvicorn.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, List, Optional

import typer
from typer.core import TyperArgument, TyperCommand

from ctxlab import __version__, limits
from ctxlab.errors import CtxlabError, UsageError

if TYPE_CHECKING:
    from ctxlab.config import RunConfig
    from ctxlab.report import Report

EXIT_CODES = """Exit codes: 0 all observations match expectations; 1 drift; 2 usage error;
3 a scenario crashed or timed out; 5 nothing selected; 130 interrupted (Ctrl-C);
141 stdout closed early (a pipe); 143 terminated (SIGTERM)."""

app = typer.Typer(
    help=f"Reproduce and observe the ways a ContextVar is lost or leaks in ASGI apps.\n\n{EXIT_CODES}",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: Rich-formatted help imports rich.markdown and markdown-it,
    # which would double the time `ctxlab --help` takes.
    rich_markup_mode=None,
)


class PlainArgument(TyperArgument):
    """An argument shown as the user types it: `FILE`, not `{FILE}` or `FILE <path>`."""

    def _usage_display_name(self) -> str:
        return self.display_name_raw if self.required else f"[{self.display_name_raw}]"

    def display_type_rich(self, ctx) -> None:
        return None


class PlainCommand(TyperCommand):
    """A command whose help names its arguments plainly (see PlainArgument)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.__class__ = PlainArgument


class Server(str, Enum):
    """`--server`: one way for requests to reach the app, or both."""

    asgi = "asgi"
    uvicorn = "uvicorn"
    hypercorn = "hypercorn"
    granian = "granian"
    both = "both"

    @property
    def runs_on(self) -> list[str]:
        """The servers to run on, in report order."""
        return ["asgi", "uvicorn"] if self is Server.both else [self.value]


# The choices of ctxlab.config.LOOPS and HTTP_PARSERS, spelled out so that
# `--help` imports nothing more.
Loop = Enum("Loop", {"asyncio": "asyncio", "uvloop": "uvloop"}, type=str)
Http = Enum("Http", {"h11": "h11", "httptools": "httptools"}, type=str)
LoopOption = Annotated[
    Optional[Loop],
    typer.Option(
        metavar="asyncio|uvloop",
        help="The event loop [default: asyncio in process; for a real server, what it picks: uvloop when installed, except hypercorn].",
    ),
]
HttpOption = Annotated[
    Optional[Http],
    typer.Option(
        metavar="h11|httptools", help="uvicorn's HTTP parser [default: httptools when installed, as uvicorn picks]."
    ),
]


def _configs(
    server: Server,
    loop: Optional[Loop] = None,
    http: Optional[Http] = None,
    spec_version: Optional[str] = None,
    concurrency: Optional[int] = None,
) -> list[RunConfig]:
    """One run configuration per server asked for, with the loop and parser
    each will really use."""
    from ctxlab.config import RunConfig, settled

    if http is not None and "uvicorn" not in server.runs_on:
        raise UsageError("--http applies to --server uvicorn (or both); hypercorn and granian parse HTTP themselves")
    chosen = {"loop": loop.value if loop else None, "http": http.value if http else None}
    return [
        settled(RunConfig(name, spec_version=spec_version, concurrency=concurrency, **chosen))
        for name in server.runs_on
    ]


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
    Optional[List[Path]], typer.Option("--scenarios", metavar="DIR", help="Also load scenarios from this directory.")
]

# What `probe` and `trace` take alike: the user's app and how to load it.
TargetArgument = Annotated[
    str, typer.Argument(metavar="MODULE:ATTR", help="Your app, as uvicorn names it: myapp.main:app.")
]
FactoryOption = Annotated[bool, typer.Option("--factory", help="ATTR is a function that returns the app.")]
AppDirOption = Annotated[Path, typer.Option("--app-dir", metavar="DIR", help="Where to import MODULE from.")]
# How long probe and trace wait for the user's app (and diff, for a trace
# saved before traces kept theirs).
DEFAULT_TIMEOUT = 30.0


def _seconds(value: str) -> float:
    """--timeout's value.  Checked here, not with min and max: NaN passes
    neither bound, and was told it should be at most 86400."""
    try:
        seconds = float(value)
    except ValueError:
        raise typer.BadParameter(f"expects seconds, such as 30, not {value!r}") from None
    if not limits.TIMEOUT[0] <= seconds <= limits.TIMEOUT[1]:
        raise typer.BadParameter(f"expects seconds from {limits.TIMEOUT[0]:g} to {limits.TIMEOUT[1]:g}, not {value}")
    return seconds


TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        parser=_seconds,
        metavar="SECONDS",
        help="Give up on an app that does not answer by then (0.1 to 86400 seconds).",
    ),
]


def _file_name(value: str) -> Path:
    """A FILE option's value: Path("") would be ".", and a user who passed
    an empty name (an unset shell variable) would hear about a directory."""
    if not value:
        raise typer.BadParameter("a file name cannot be empty")
    return Path(value)


def _writable(path: Optional[Path], baseline: Optional[Path] = None, stdout_used_for: str = "") -> None:
    """Refuse an output path before the run, not after it (see ctxlab.files),
    and one naming the --baseline file, which the output would replace
    (`check --baseline s.json --junit s.json` made the snapshot JUnit XML).
    `-` (stdout) is refused where the command prints `stdout_used_for` there:
    the two would run together, and neither could be read."""
    from ctxlab.files import check_writable, is_stdout_name, same_regular_file

    if path is None:
        return
    if stdout_used_for and is_stdout_name(path):
        raise UsageError(f"'-' (stdout) already holds {stdout_used_for}; write this output to a file")
    check_writable(path)
    if baseline is not None and same_regular_file(path, baseline):
        raise UsageError(f"{path} is also the --baseline file, which the output would replace; write it elsewhere")


@app.command("list", cls=PlainCommand)
def list_(
    tag: Annotated[
        Optional[List[str]], typer.Option("--tag", metavar="TAG", help="Only scenarios with this tag.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """The catalog: name, tags, one-line summary."""
    from ctxlab import engine
    from ctxlab.output import OutputFormat

    entries = engine.tagged(list(engine.entries(scenarios).values()), tag or [])
    OutputFormat.chosen(as_json).emitter().catalog(entries)
    return 0


@app.command(cls=PlainCommand)
def run(
    names: Annotated[
        Optional[List[str]],
        typer.Argument(metavar="NAME...", help="Scenario names (see 'ctxlab list').", show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every scenario.")] = False,
    tag: Annotated[Optional[List[str]], typer.Option("--tag", metavar="TAG", help="Scenarios with this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The JSON report on stdout.")] = False,
    server: Annotated[
        Server, typer.Option(metavar="asgi|uvicorn|hypercorn|granian|both", help="How requests reach the app.")
    ] = Server.asgi,
    loop: LoopOption = None,
    http: HttpOption = None,
    spec_version: Annotated[
        Optional[str],
        typer.Option("--spec-version", metavar="MAJOR.MINOR", help="ASGI spec_version to advertise, e.g. 2.4."),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("-o", "--output", metavar="FILE", parser=_file_name, help="Also write the JSON report here."),
    ] = None,
    concurrency: Annotated[
        Optional[int],
        typer.Option(min=1, max=10000, metavar="N", help="Concurrent requests, for scenarios that send them."),
    ] = None,
    scenarios: ScenariosOption = None,
) -> int:
    """Run scenarios and compare what each probe saw with what is expected."""
    if spec_version is not None and not limits.SPEC_VERSION.fullmatch(spec_version):
        raise UsageError(f"bad --spec-version {spec_version!r}; expected MAJOR.MINOR such as 2.3 or 2.4")
    if spec_version is not None and server is not Server.asgi:
        raise UsageError("--spec-version applies to --server asgi only; a real server advertises its own")
    from ctxlab import engine
    from ctxlab.output import OutputFormat, console

    entries = engine.select(names or [], all_, tag or [], scenarios)
    _writable(output, stdout_used_for="the report (--json prints it there as JSON)")
    if not entries:
        console(stderr=True).print("nothing selected: no scenario has all of that")
        return 5
    emitter = OutputFormat.chosen(as_json).emitter()
    started = time.perf_counter()
    results = engine.execute(entries, _configs(server, loop, http, spec_version, concurrency), emitter.progress)
    if output is not None:
        _write_unless_interrupted(output, results, lambda: json.dumps(results.to_json(), indent=2) + "\n")
    emitter.report(results, time.perf_counter() - started)
    return results.exit_code


def _write_unless_interrupted(path: Path, results: Report, text: Callable[[], str]) -> None:
    """Write `text()` to `path`, unless the run was interrupted: a file
    missing scenarios would read later as a complete report (a snapshot
    would diff as removals, a JUnit file as a passing check)."""
    if results.interrupted:
        _not_written(path)
        return
    from ctxlab import files

    files.write(path, text())


def _not_written(path: Path) -> None:
    from ctxlab.files import shown
    from ctxlab.output import console

    console(stderr=True).print(f"interrupted: {shown(path)} not written")


@app.command(cls=PlainCommand)
def explain(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A scenario name.")],
    server: Annotated[
        Server,
        typer.Option(metavar="asgi|uvicorn|hypercorn|granian", help="Where to run it for the task tree (not both)."),
    ] = Server.asgi,
    scenarios: ScenariosOption = None,
) -> int:
    """The story of one scenario: onion, task tree, why, the fix, the source."""
    if server is Server.both:
        raise UsageError("explain runs on one server: --server asgi, uvicorn, hypercorn or granian")
    from ctxlab import engine, render
    from ctxlab.output import console
    from ctxlab.scenario import read_source

    entry = engine.select([name], False, [], scenarios)[0]
    (config,) = _configs(server)
    result = engine.run_guarded(entry, config)
    source = read_source(entry.path)
    render.explain(engine.load_or_crash(entry, result), result, source, console())
    return 0


@app.command(cls=PlainCommand)
def serve(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A scenario name.")],
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port on 127.0.0.1 (0: any free one).")
    ] = 8000,
    scenarios: ScenariosOption = None,
) -> int:
    """Serve a scenario's app with uvicorn on 127.0.0.1 for curl, printing
    probe rows as requests arrive; Ctrl-C stops it."""
    from ctxlab import engine

    entry = engine.select([name], False, [], scenarios)[0]
    if "uvicorn" not in entry.servers:
        raise UsageError(f"{name!r} runs only in process (--server asgi); it cannot be served")
    from ctxlab import isolate, render, runner
    from ctxlab.errors import ServerFailed
    from ctxlab.output import console

    scenario = engine.load_checked(entry)
    out = console()

    def ready(url: str) -> None:
        first = scenario.requests[0]
        out.print(f"serving {name} on {url} (Ctrl-C to stop); try: curl -X {first.method} {url}{first.path}")

    try:
        # In a child process, so that an app blocking its event loop cannot
        # make Ctrl-C wait (see ctxlab.isolate).
        isolate.call(
            lambda: runner.serve(
                scenario, port, ready, lambda record, where: out.print(render.live_line(record, where))
            )
        )
    except ServerFailed as exc:
        raise UsageError(f"cannot serve on 127.0.0.1:{port}: {exc}") from None
    except KeyboardInterrupt:
        out.print("stopped")
    return 0


@app.command(cls=PlainCommand)
def check(
    server: Annotated[
        Server, typer.Option(metavar="asgi|uvicorn|hypercorn|granian|both", help="How requests reach the app.")
    ] = Server.asgi,
    loop: LoopOption = None,
    http: HttpOption = None,
    junit: Annotated[
        Optional[Path], typer.Option("--junit", metavar="FILE", parser=_file_name, help="Write JUnit XML here.")
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option(
            "--baseline",
            metavar="FILE",
            parser=_file_name,
            help="Also fail when observations differ from this snapshot (- for stdin).",
        ),
    ] = None,
    scenarios: ScenariosOption = None,
) -> int:
    """CI mode: every scenario, a line each, details only for failures."""
    from ctxlab import engine, render, report
    from ctxlab.output import console

    before = engine.load_baseline(baseline, scenarios) if baseline is not None else None
    _writable(junit, baseline, stdout_used_for="check's lines")

    out = console()
    started = time.perf_counter()
    annotating = os.environ.get("GITHUB_ACTIONS") == "true"
    if annotating:
        # An app's error text is printed as it is: a line of it starting
        # "::" would be a workflow command (`::add-mask::`) to GitHub.  Its
        # commands stay off until ctxlab's own annotations.
        import secrets

        resume = secrets.token_hex(16)
        print(f"::stop-commands::{resume}", flush=True)
    show = partial(render.check_line, console=out)
    results = engine.execute(engine.entries(scenarios).values(), _configs(server, loop, http), show)
    if junit is not None:
        _write_unless_interrupted(junit, results, lambda: report.junit(results))
    if annotating:
        print(f"::{resume}::")
        for line in report.github_annotations(results):
            print(line)
    code = results.exit_code
    if before is not None and not results.interrupted:  # the missing runs would show as removed
        found, not_compared = engine.baseline_changes(before, results)
        if not_compared:
            out.print(
                render.Text(f"baseline: {not_compared} runs on other servers not compared (see --server)", style="dim")
            )
        render.changes(found, before.get("environment", {}), report.environment(), out)
        if found and code in (0, 5):
            code = 1
    out.print(render.summary_line(results, time.perf_counter() - started))
    return code


@app.command(cls=PlainCommand)
def snapshot(
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            parser=_file_name,
            help="Where to write the snapshot (JSON; - for stdout).",
        ),
    ],
    server: Annotated[
        Server,
        typer.Option(
            metavar="asgi|uvicorn|hypercorn|granian|both",
            help="Record in process, on a real server, or both (asgi and uvicorn).",
        ),
    ] = Server.both,
    loop: LoopOption = None,
    http: HttpOption = None,
    scenarios: ScenariosOption = None,
) -> int:
    """Save every scenario's observations in this environment, for `diff`."""
    from ctxlab import engine
    from ctxlab.files import shown
    from ctxlab.output import console

    _writable(output)
    results = engine.execute(engine.entries(scenarios).values(), _configs(server, loop, http))
    _write_unless_interrupted(output, results, lambda: json.dumps(results.to_json(), indent=2) + "\n")
    if results.interrupted:
        return 130
    s = results.summary
    console(stderr=True).print(
        f"wrote {shown(output)}: {s['total']} scenario runs ({s['passed']} passed, "
        f"{s['drifted']} drifted, {s['errors']} errors, {s['skipped']} skipped)"
    )
    return 3 if s["errors"] else 0


@app.command(cls=PlainCommand)
def diff(
    snapshot_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            parser=_file_name,
            help="A snapshot from 'ctxlab snapshot', or a trace saved with -o (- for stdin).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="The changes as JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """Run the snapshot's scenarios now (or trace a saved trace's app again)
    and show what changed against it."""
    from ctxlab import engine, report
    from ctxlab.output import OutputFormat

    document = report.read_saved(snapshot_file)
    if report.is_saved_trace(document):
        if scenarios:
            raise UsageError(f"{snapshot_file} is a saved trace, which names its own app: --scenarios is for snapshots")
        return _diff_trace(snapshot_file, as_json, document)
    before = engine.load_baseline(snapshot_file, scenarios, document)
    results = engine.rerun(before, scenarios)
    if results.interrupted:
        return 130
    found = report.diff(before, results.to_json())
    OutputFormat.chosen(as_json).emitter().changes(found, before.get("environment", {}), report.environment())
    return 1 if found else 0


@app.command(cls=PlainCommand)
def matrix(
    with_: Annotated[
        List[str],
        typer.Option(
            "--with",
            metavar="REQUIREMENTS",
            help="One column: requirements separated by spaces, e.g. 'starlette==0.41.3 uvicorn==0.44.0'.",
        ),
    ],
    server: Annotated[
        Server,
        typer.Option(
            metavar="asgi|uvicorn|hypercorn|granian|both", help="How requests reach the app, in every column."
        ),
    ] = Server.both,
    as_json: Annotated[bool, typer.Option("--json", help="The grid as JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """The same scenarios across framework versions: a scenario x environment grid."""
    from ctxlab import engine
    from ctxlab import matrix as matrices
    from ctxlab.output import OutputFormat, console

    engine.entries(scenarios)  # a bad --scenarios directory is a usage error, before any build
    extra = [arg for directory in scenarios or [] for arg in ("--scenarios", str(directory.resolve()))]
    columns = [matrices.parse_column(text) for text in with_]
    if len(columns) < 2:
        raise UsageError("give at least two --with columns to compare")
    for column in columns:
        matrices.python_for(column)  # a Python this machine lacks is a usage error, before any build
    matrices.check_cache()
    for column in columns:
        matrices.run_column(column, server.value, extra, progress=lambda line: console(stderr=True).print(line))
    grid = matrices.grid(columns)
    OutputFormat.chosen(as_json).emitter().matrix(grid)
    return matrices.exit_code(grid)


def _user_request_checks(
    path: Optional[str],
    method: str,
    server: Server,
    header: Optional[List[str]],
    data: Optional[str],
    command: str,
    host: Optional[str] = None,
) -> list:
    """What `probe` and `trace` check alike: the path, the method, the
    server, the body, probe's --host, and the `--header K:V` values, as
    (name, value) pairs."""
    from ctxlab.validate import TOKEN

    if path is not None and not path.startswith("/"):
        raise UsageError(f"--path must start with '/', got {path!r}")
    if path is not None and not limits.encodes(path, "utf-8"):
        raise UsageError(f"--path must be UTF-8 text, got {path!r}")
    if data is not None and not limits.encodes(data, "utf-8"):
        raise UsageError(f"--data must be UTF-8 text, got {data!r}")
    if host is not None and not limits.encodes(host, "latin-1"):
        raise UsageError(f"--host is a header value, Latin-1 text (HTTP's octets), got {host!r}")
    if not TOKEN.fullmatch(method):
        raise UsageError(f"--method expects an HTTP method such as GET or POST, got {method!r}")
    if server not in (Server.asgi, Server.uvicorn):
        raise UsageError(
            f"--server {server.value} is not available for {command}; choose --server asgi or --server uvicorn"
        )
    headers = []
    for given in header or []:
        name, colon, value = given.partition(":")
        if not colon or not TOKEN.fullmatch(name.strip()) or any(c in value for c in "\r\n\0"):
            raise UsageError(f"--header expects K:V such as 'Authorization: Bearer x', got {given!r}")
        if not limits.encodes(value, "latin-1"):
            raise UsageError(f"--header values are Latin-1 text (HTTP's octets), got {given!r}")
        if name.strip().lower() in FRAMING:
            # One that disagreed with the body made h11 refuse to send it
            # (a traceback), and in process the app saw two.
            raise UsageError(f"--header {name.strip()}: ctxlab frames the body itself, from --data; leave it out")
        headers.append((name.strip(), value.strip()))
    return headers


FRAMING = ("content-length", "transfer-encoding")


def _on_the_users_app(work: Callable[[], Any], target: str, timeout: float, doing: str) -> Any:
    """`work()` (which loads and drives the user's app) in a child process:
    the app may hang or leave threads behind (see ctxlab.isolate), and what
    it prints goes to stderr, so stdout keeps only ctxlab's output."""
    from ctxlab import isolate
    from ctxlab.errors import DiagnoseError

    try:
        return isolate.call(work, timeout, quiet_stdout=True)
    except isolate.TimedOut:
        raise DiagnoseError(
            f"{target} did not return within {timeout:g}s (an import, factory or request that never returns?);"
            " see --timeout"
        ) from None
    except isolate.Died as exc:
        raise DiagnoseError(f"{doing} {target} ended the process: {exc}") from None


@app.command("probe", cls=PlainCommand)
def probe_app(
    target: TargetArgument,
    factory: FactoryOption = False,
    app_dir: AppDirOption = Path("."),
    path: Annotated[
        Optional[str],
        typer.Option("--path", metavar="PATH", help="Probe through this route of yours instead of a probe route."),
    ] = None,
    method: Annotated[str, typer.Option("--method", metavar="METHOD", help="HTTP method for --path.")] = "GET",
    header: Annotated[
        Optional[list[str]],
        typer.Option(
            "--header", metavar="K:V", help="K:V header to send (repeatable), e.g. 'Authorization: Bearer x'."
        ),
    ] = None,
    host: Annotated[
        Optional[str],
        typer.Option("--host", metavar="HOST", help="Host header (default: one TrustedHostMiddleware allows)."),
    ] = None,
    data: Annotated[Optional[str], typer.Option("--data", metavar="BODY", help="Request body.")] = None,
    server: Annotated[
        Server, typer.Option(metavar="asgi|uvicorn", help="asgi (in process) or uvicorn (real, on 127.0.0.1).")
    ] = Server.asgi,
    lifespan: Annotated[bool, typer.Option("--lifespan", help="Run the app's lifespan around the request.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The diagnosis as JSON on stdout.")] = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> int:
    """Diagnose your own Starlette/FastAPI app: which middleware layers see
    values set in the endpoint, which cut them, and why. Your app is not changed."""
    headers = _user_request_checks(path, method, server, header, data, "probe", host)
    from ctxlab.diagnose import diagnose
    from ctxlab.output import OutputFormat

    result = _on_the_users_app(
        lambda: diagnose(
            target, factory=factory, app_dir=app_dir, path=path, method=method.upper(), headers=tuple(headers),
            host=host, data=(data or "").encode(), lifespan=lifespan, server=server.value,
        ),
        target, timeout, "probing",
    )  # fmt: skip
    for note in result.notes:
        print(f"ctxlab: note: {note}", file=sys.stderr)
    OutputFormat.chosen(as_json).emitter().diagnosis(result)
    # A thread the app left behind died with the child (and main() would
    # not wait for one either).
    return 1 if result.culprits else 0 if result.complete else 2


@app.command("trace", cls=PlainCommand)
def trace_app(
    target: TargetArgument,
    requests: Annotated[
        int,
        typer.Option(
            "--requests", min=1, max=limits.MAX_REQUESTS, metavar="N", help="How many requests, one after another."
        ),
    ] = 2,
    path: Annotated[str, typer.Option("--path", metavar="PATH", help="The path each request asks for.")] = "/",
    method: Annotated[str, typer.Option("--method", metavar="METHOD", help="The HTTP method.")] = "GET",
    header: Annotated[
        Optional[List[str]], typer.Option("--header", metavar="K:V", help="A request header, K:V (repeatable).")
    ] = None,
    data: Annotated[Optional[str], typer.Option("--data", metavar="BODY", help="The request body.")] = None,
    server: Annotated[
        Server, typer.Option(metavar="asgi|uvicorn", help="In process (asgi) or a real uvicorn.")
    ] = Server.asgi,
    lifespan: Annotated[bool, typer.Option("--lifespan", help="Run the app's lifespan around the requests.")] = False,
    var: Annotated[
        Optional[List[str]], typer.Option("--var", metavar="NAME", help="Only this variable (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Events and findings as JSON on stdout.")] = False,
    output: Annotated[
        Optional[Path],
        typer.Option("-o", "--output", metavar="FILE", parser=_file_name, help="Also save the JSON here (for diff)."),
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option(
            "--baseline",
            metavar="FILE",
            parser=_file_name,
            help="Also fail when the trace differs from this saved one (- for stdin).",
        ),
    ] = None,
    factory: FactoryOption = False,
    app_dir: AppDirOption = Path("."),
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> int:
    """Follow your own ContextVars through real requests: every get, set and
    reset at file:line, and each value lost or leaked, with the fix.
    Exit 0 no finding, 1 findings (or changes against --baseline), 2 usage error
    (also: every request failed and no ContextVar was used, or --var names a
    variable the app never used)."""
    headers = _user_request_checks(path, method, server, header, data, "trace")
    _writable(output, baseline, stdout_used_for="the trace (--json prints it there as JSON)")
    from ctxlab import files, render
    from ctxlab import trace as tracing
    from ctxlab.output import OutputFormat

    before = tracing.load_trace(baseline) if baseline is not None else None

    def traced() -> tuple[dict, list]:
        # The live result holds tasks and ContextVars, which cannot leave
        # the child: it sends the JSON document and the drawn view.
        result = tracing.trace(
            target, requests=requests, path=path, method=method.upper(), headers=headers,
            data=(data or "").encode(), server=server.value, lifespan=lifespan, variables=var or [],
            factory=factory, app_dir=app_dir,
        )  # fmt: skip
        _refuse_unused(var or [], result.names_used, requests)
        return result.to_json(), [] if as_json else render.trace_view(result)

    try:
        document, view = _on_the_users_app(traced, target, timeout, "tracing")
    except KeyboardInterrupt:  # and SIGTERM: say so, as run -o does
        if output is not None:
            _not_written(output)
        raise
    # A 4xx too: a --path no route takes (404), a request the app refuses.
    failed = [r for r in document["requests"] if r["status"] is None or r["status"] >= 400]
    if len(failed) == len(document["requests"]) and not document["events"]:
        # "No finding" would pass CI on an app that cannot serve at all.
        first = failed[0]["error"] or f"status {failed[0]['status']}"
        raise UsageError(f"every request to {target} failed (request 1: {first}) and no ContextVar was used: "
                         "there is nothing to trace; check the app and --path")  # fmt: skip
    document["options"]["timeout"] = timeout  # for `diff`, which traces again
    if output is not None:
        files.write(output, json.dumps(document, indent=2) + "\n")
    found = tracing.changes(before, document) if before is not None else None
    OutputFormat.chosen(as_json).emitter().trace(document, view, found)
    return 1 if document["findings"] or found else 0


def _refuse_unused(named: List[str], used: set[str], requests: int) -> None:
    """`--var` naming a variable the app never touched: "no finding" would
    hide a typo (or the wrong --path) from the user and from CI."""
    from ctxlab.scenario import suggest

    unused = [name for name in named if name not in used]
    if unused:
        listed = f"; the app used {', '.join(sorted(used))}" if used else "; the app used none"
        raise UsageError(
            f"no ContextVar named {unused[0]!r} was used during the {requests} request(s)"
            + suggest(unused[0], used, otherwise=listed)
        )


def _diff_trace(path: Path, as_json: bool, document: dict[str, Any]) -> int:
    """`ctxlab diff` of a saved trace: trace the app again, show what changed."""
    from ctxlab import trace as tracing
    from ctxlab.output import OutputFormat

    before = tracing.load_trace(path, document)
    # As long as the saved trace was allowed (older ones saved none).
    timeout = before["options"].get("timeout") or DEFAULT_TIMEOUT
    after = _on_the_users_app(lambda: tracing.again(before).to_json(), before["app"], timeout, "tracing")
    found = tracing.changes(before, after)
    OutputFormat.chosen(as_json).emitter().trace_changes(before["app"], found)
    return 1 if found else 0


def _is_click_error(exc: Exception) -> bool:
    # Typer may bring its own copy of click, so match the interface.
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


_terminated = False


def _terminate(signum, frame) -> None:
    """SIGTERM: raise where Ctrl-C would, so that the same cleanup runs and
    the partial report is printed; main() then exits 143, not 130."""
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def main() -> None:
    """The `ctxlab` command: every error ends here as one line on stderr."""
    import signal

    from ctxlab.terminal import fit_streams

    signal.signal(signal.SIGTERM, _terminate)
    _stand_in_for_closed_streams()
    fit_streams()
    try:
        if sys.stdout is None:  # started with stdout closed (`ctxlab list >&-`): Python gives None
            raise UsageError("stdout is closed; redirect it (> /dev/null) to run without output")
        code = _app_for(sys.argv[1:])(standalone_mode=False)
        sys.stdout.flush()  # here, where a failure can still be told (at exit it cannot)
    except CtxlabError as exc:
        _say(f"ctxlab: error: {exc}")
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):  # click turns Ctrl-C into Abort
        code = 130
    except BrokenPipeError:
        # The reader went away (`ctxlab run --all | head -1`): stop quietly,
        # with the status of a process that SIGPIPE ended, as Unix tools do.
        _discard(sys.stdout)
        code = 141
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _FULL:
            raise
        # stdout cannot take the output (`> /dev/full`, a full disk, `ulimit
        # -f`, a terminal gone): ctxlab's own files fail as CtxlabErrors.
        _discard(sys.stdout)
        _say(f"ctxlab: error: cannot write to stdout: {exc.strerror}")
        code = 2
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `ctxlab`: the help, as click prints it, whole
            print(exc.format_message(), file=sys.stderr)
        else:
            # Recent typers check values with pydantic, whose message for a
            # bad choice starts "Value error, ": print the line older typers print.
            _say(f"ctxlab: error: {exc.format_message().replace(': Value error, ', ': ', 1)}")
        code = exc.exit_code
    if _terminated:  # also where Ctrl-C is the normal way to stop (serve)
        code = 143
    _exit(code or 0)


def _app_for(arguments: list[str]) -> typer.Typer:
    """`app` holding only the command the arguments name, if they name one.
    typer makes every command's click parameters before it runs one: for
    ctxlab's commands, 50 of the 170 million instructions `ctxlab list`
    took beyond a one-command Typer app (cachegrind).  (Only --version comes
    before a command, and it takes no value: the first argument that is not
    an option is the command.)"""
    import copy

    name = next((argument for argument in arguments if not argument.startswith("-")), None)
    chosen = [c for c in app.registered_commands if typer.main.get_command_name(c.name or c.callback.__name__) == name]
    if not chosen:
        return app  # a typo, or no command: click says so, naming them all
    lean = copy.copy(app)
    lean.registered_commands = chosen
    return lean


def _stand_in_for_closed_streams() -> None:
    """Started with stdin or stderr closed (`2>&-`): /dev/null takes its
    descriptor.  Else the next file ctxlab opens (a worker's pipe) would
    get it, what an app prints to stderr would go into that pipe, and
    ctxlab's own error lines would go to stdout."""
    for fd, name, mode in ((0, "stdin", "r"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            setattr(sys, name, open(fd, mode, closefd=False))


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)


def _discard(stream) -> None:
    """What `stream` still buffers goes nowhere, so that Python's own flush
    at exit cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


LONGEST_ERROR = 1000


def _say(line: str) -> None:
    """The error line on stderr, if stderr can take it: when it cannot
    (`2> /dev/full`), the exit code alone must tell."""
    from ctxlab.terminal import visible

    if len(line) > LONGEST_ERROR:
        # An argument pasted by mistake (`$(cat big.json)`) is echoed by the
        # error that names it: its ends are enough to recognise it.
        kept = LONGEST_ERROR // 2
        line = f"{line[:kept]} [... {len(line) - 2 * kept:,} characters left out ...] {line[-kept:]}"
    try:
        print(visible(line), file=sys.stderr, flush=True)
    except OSError:
        _discard(sys.stderr)


def _exit(code: int) -> None:
    """Exit, even if a user's app left a non-daemon thread running in this
    process: waiting for it would hang."""
    import threading

    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if lingering:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
