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
from typer.core import TyperArgument, TyperCommand

from ctxlab import __version__

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


class UsageError(Exception):
    """Bad input: one line on stderr, exit 2."""


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


class ScenarioCrashed(UsageError):
    """A scenario's own code failed before it could run: one line, exit 3."""

    exit_code = 3


class Server(str, Enum):
    asgi = "asgi"
    uvicorn = "uvicorn"
    both = "both"

    @property
    def runs_on(self) -> list[str]:
        return ["asgi", "uvicorn"] if self is Server.both else [self.value]


def _console(stderr: bool = False):
    from ctxlab.terminal import console

    return console(stderr)


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
    from ctxlab.output import OutputError, check_writable

    if path is not None:
        try:
            check_writable(path)
        except OutputError as exc:
            raise UsageError(str(exc)) from None


def write_output(path: Path, text: str) -> None:
    """Write a file the user named (see ctxlab.output)."""
    from ctxlab.output import OutputError, write

    try:
        write(path, text)
    except OutputError as exc:
        raise UsageError(str(exc)) from None


def run_entry(entry, server: str, spec_version: Optional[str], concurrency: Optional[int] = None):
    """Load, run and compare one catalog entry: a ScenarioReport."""
    from ctxlab import report, runner
    from ctxlab.scenario import Env, load

    if server not in entry.servers:
        return report.skipped(entry.name, f"runs only on {', '.join(entry.servers)}", server)
    try:
        scenario = load(entry)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken module is that scenario's error
        return report.ScenarioReport(entry.name, "error", error=f"cannot load: {type(exc).__name__}: {exc}", server=server)
    unmet = scenario.unmet_requirement(Env(server, spec_version, None))
    if unmet:
        return report.skipped(entry.name, unmet, server)
    # --concurrency only applies to scenarios built for it
    ran = runner.run(scenario, server, spec_version, concurrency if scenario.concurrency else None)
    return report.compare(scenario, ran, server, spec_version)


def run_entry_guarded(entry, server: str, spec_version: Optional[str], concurrency: Optional[int] = None):
    """`run_entry` in a child process killed at the scenario's timeout (see
    ctxlab.isolate): a hang of any kind becomes that scenario's error."""
    from ctxlab import isolate, report
    from ctxlab.scenario import load

    try:
        timeout = load(entry).timeout
    except (Exception, SystemExit):
        return run_entry(entry, server, spec_version, concurrency)  # reports why it cannot load
    started = time.perf_counter()
    try:
        return isolate.call(lambda: run_entry(entry, server, spec_version, concurrency), timeout + isolate.GRACE)
    except (isolate.TimedOut, isolate.Died) as exc:
        why = f"timed out after {timeout:g}s (killed)" if isinstance(exc, isolate.TimedOut) else f"crashed: {exc}"
        return report.ScenarioReport(entry.name, "error", (time.perf_counter() - started) * 1000, why, server=server)


def execute(entries, server: "Server", spec_version: Optional[str], concurrency: Optional[int] = None, progress=None):
    """Run the entries one by one, on each server asked for; Ctrl-C keeps
    what has finished."""
    from ctxlab.report import Report

    results = Report([], server=server.value, spec_version=spec_version)
    try:
        for entry in entries:
            outcomes = [run_entry_guarded(entry, name, spec_version, concurrency) for name in server.runs_on]
            results.scenarios.extend(outcomes)
            if progress:
                progress(entry, outcomes)
    except KeyboardInterrupt:
        results.interrupted = True
    return results


@app.command("list", cls=PlainCommand)
def list_(
    tag: Annotated[Optional[List[str]], typer.Option("--tag", metavar="TAG", help="Only scenarios with this tag.")] = None,
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


@app.command(cls=PlainCommand)
def run(
    names: Annotated[Optional[List[str]], typer.Argument(metavar="NAME...", help="Scenario names (see 'ctxlab list').", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every scenario.")] = False,
    tag: Annotated[Optional[List[str]], typer.Option("--tag", metavar="TAG", help="Scenarios with this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The JSON report on stdout.")] = False,
    server: Annotated[Server, typer.Option(metavar="asgi|uvicorn|both", help="How requests reach the app.")] = Server.asgi,
    spec_version: Annotated[
        Optional[str], typer.Option("--spec-version", metavar="MAJOR.MINOR", help="ASGI spec_version to advertise, e.g. 2.4.")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Also write the JSON report here.")] = None,
    concurrency: Annotated[
        Optional[int], typer.Option(min=1, max=10000, metavar="N", help="Concurrent requests, for scenarios that send them.")
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
        write_output(output, document + "\n")
    if as_json:
        typer.echo(document)
    else:
        console.print(render.summary_line(results, time.perf_counter() - started))
    return results.exit_code


@app.command(cls=PlainCommand)
def explain(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A scenario name.")],
    server: Annotated[Server, typer.Option(metavar="asgi|uvicorn", help="Where to run it for the task tree (not both).")] = Server.asgi,
    scenarios: ScenariosOption = None,
) -> int:
    """The story of one scenario: onion, task tree, why, the fix, the source."""
    if server is Server.both:
        raise UsageError("explain runs on one server: --server asgi or --server uvicorn")
    entry = select([name], False, [], scenarios)[0]
    from ctxlab import render

    result = run_entry_guarded(entry, server.value, None)
    render.explain(_loaded(entry), result, entry.path.read_text(encoding="utf-8"), _console())
    return 0


def _loaded(entry):
    """The entry's Scenario; a module that fails to import is a crash (exit 3)."""
    from ctxlab.scenario import load

    try:
        return load(entry)
    except (Exception, SystemExit) as exc:
        raise ScenarioCrashed(f"cannot load {entry.name!r} from {entry.path}: {type(exc).__name__}: {exc}") from None


@app.command(cls=PlainCommand)
def serve(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A scenario name.")],
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port on 127.0.0.1 (0: any free one).")] = 8000,
    scenarios: ScenariosOption = None,
) -> int:
    """Serve a scenario's app with uvicorn on 127.0.0.1 for curl, printing
    probe rows as requests arrive; Ctrl-C stops it."""
    entry = select([name], False, [], scenarios)[0]
    if "uvicorn" not in entry.servers:
        raise UsageError(f"{name!r} runs only in process (--server asgi); it cannot be served")
    from ctxlab import isolate, render, runner
    from ctxlab.servers import ServerFailed

    scenario = _loaded(entry)
    console, labels = _console(), render.LiveLabels()

    def ready(url: str) -> None:
        first = scenario.requests[0]
        console.print(f"serving {name} on {url} (Ctrl-C to stop); try: curl -X {first.method} {url}{first.path}")

    try:
        # In a child process, so that an app blocking its event loop cannot
        # make Ctrl-C wait (see ctxlab.isolate).
        isolate.call(lambda: runner.serve(scenario, port, ready, lambda record: console.print(labels.line(record))))
    except ServerFailed as exc:
        raise UsageError(f"cannot serve on 127.0.0.1:{port}: {exc}") from None
    except KeyboardInterrupt:
        console.print("stopped")
    return 0


def _baseline(path: Optional[Path], entries):
    """The saved report at `path`, whose scenarios must all be in `entries`."""
    if path is None:
        return None
    from ctxlab.report import ReportFileError, load_report

    try:
        before = load_report(path, [s.value for s in Server if s is not Server.both])
    except ReportFileError as exc:
        raise UsageError(str(exc)) from None
    for name in dict.fromkeys(s["name"] for s in before["scenarios"]):
        if name not in entries:
            from ctxlab.scenario import suggest

            hint = suggest(name, entries, otherwise="")
            raise UsageError(f"{path} names scenario {name!r}, which is not in the catalog{hint}; "
                             "if it came from a directory of your own, pass --scenarios DIR")  # fmt: skip
    return before


@app.command(cls=PlainCommand)
def check(
    server: Annotated[Server, typer.Option(metavar="asgi|uvicorn|both", help="How requests reach the app.")] = Server.asgi,
    junit: Annotated[Optional[Path], typer.Option("--junit", metavar="FILE", help="Write JUnit XML here.")] = None,
    baseline: Annotated[
        Optional[Path], typer.Option("--baseline", metavar="FILE", help="Also fail when observations differ from this snapshot.")
    ] = None,
    scenarios: ScenariosOption = None,
) -> int:
    """CI mode: every scenario, a line each, details only for failures."""
    entries = _entries(scenarios)
    before = _baseline(baseline, entries)
    _writable(junit)
    from rich.text import Text

    from ctxlab import render, report

    console = _console()
    started = time.perf_counter()
    results = execute(list(entries.values()), server, None, None,
                      lambda entry, outcomes: render.check_line(entry, outcomes, console))  # fmt: skip
    if junit is not None:
        write_output(junit, report.junit(results))
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


@app.command(cls=PlainCommand)
def snapshot(
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="Where to write the snapshot (JSON).")],
    server: Annotated[Server, typer.Option(metavar="asgi|uvicorn|both", help="Record in process, on uvicorn, or both.")] = Server.both,
    scenarios: ScenariosOption = None,
) -> int:
    """Save every scenario's observations in this environment, for `diff`."""
    _writable(output)
    results = execute(list(_entries(scenarios).values()), server, None)
    if results.interrupted:
        return 130  # a partial snapshot would diff as removals: write none
    write_output(output, json.dumps(results.to_json(), indent=2) + "\n")
    s = results.summary
    _console(stderr=True).print(f"wrote {output}: {s['total']} scenario runs ({s['passed']} passed, "
                                f"{s['drifted']} drifted, {s['errors']} errors, {s['skipped']} skipped)")  # fmt: skip
    return 3 if s["errors"] else 0


@app.command(cls=PlainCommand)
def diff(
    snapshot_file: Annotated[Path, typer.Argument(metavar="FILE", help="A snapshot from 'ctxlab snapshot'.")],
    as_json: Annotated[bool, typer.Option("--json", help="The changes as JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """Run the snapshot's scenarios now and show what changed against it."""
    entries = _entries(scenarios)
    before = _baseline(snapshot_file, entries)
    from ctxlab import render, report

    names = list(dict.fromkeys(s["name"] for s in before["scenarios"]))
    servers = {ran_on for _, ran_on in report.runs(before)}
    server = Server.both if len(servers) > 1 else Server(servers.pop() if servers else "asgi")
    results = execute([entries[n] for n in names], server, before.get("spec_version"))
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


@app.command(cls=PlainCommand)
def matrix(
    with_: Annotated[
        List[str],
        typer.Option("--with", metavar="REQUIREMENTS", help="One column: requirements separated by spaces, e.g. 'starlette==0.41.3 uvicorn==0.44.0'."),
    ],
    server: Annotated[Server, typer.Option(metavar="asgi|uvicorn|both", help="How requests reach the app, in every column.")] = Server.both,
    as_json: Annotated[bool, typer.Option("--json", help="The grid as JSON on stdout.")] = False,
    scenarios: ScenariosOption = None,
) -> int:
    """The same scenarios across framework versions: a scenario x environment grid."""
    from ctxlab import matrix as matrices
    from ctxlab import render

    extra = [arg for directory in scenarios or [] for arg in ("--scenarios", str(directory.resolve()))]
    try:
        columns = [matrices.parse_column(text) for text in with_]
    except matrices.MatrixError as exc:
        raise UsageError(str(exc)) from None
    if len(columns) < 2:
        raise UsageError("give at least two --with columns to compare")
    for column in columns:
        matrices.run_column(column, server.value, extra, progress=lambda line: _console(stderr=True).print(line))
    result = matrices.grid(columns)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        render.matrix(result, _console())
    return matrices.exit_code(result)


@app.command("probe", cls=PlainCommand)
def probe_app(
    target: Annotated[str, typer.Argument(metavar="MODULE:ATTR", help="Your app, e.g. myapp.main:app.")],
    factory: Annotated[bool, typer.Option("--factory", help="ATTR is a function that returns the app.")] = False,
    app_dir: Annotated[Path, typer.Option("--app-dir", metavar="DIR", help="Where to import MODULE from.")] = Path("."),
    path: Annotated[
        Optional[str], typer.Option("--path", metavar="PATH", help="Probe through this route of yours instead of a probe route.")
    ] = None,
    method: Annotated[str, typer.Option("--method", metavar="METHOD", help="HTTP method for --path.")] = "GET",
    lifespan: Annotated[bool, typer.Option("--lifespan", help="Run the app's lifespan around the request.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The diagnosis as JSON on stdout.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Give up on an app that does not answer by then.")
    ] = 30.0,
) -> int:
    """Diagnose your own Starlette/FastAPI app: which middleware layers see
    values set in the endpoint, which cut them, and why. Your app is not changed."""
    if path is not None and not path.startswith("/"):
        raise UsageError(f"--path must start with '/', got {path!r}")
    from ctxlab import isolate, render
    from ctxlab.diagnose import DiagnoseError, diagnose

    try:
        # In a child process whose stdout is our stderr: the app may print,
        # hang, or leave threads behind (see ctxlab.isolate).
        result = isolate.call(
            lambda: diagnose(target, factory=factory, app_dir=app_dir, path=path, method=method.upper(), lifespan=lifespan),
            timeout,
            quiet_stdout=True,
        )
    except DiagnoseError as exc:
        raise UsageError(str(exc)) from None
    except isolate.TimedOut:
        raise UsageError(f"{target} did not return within {timeout:g}s (an import, factory or request that never returns?); "
                         "see --timeout") from None  # fmt: skip
    except isolate.Died as exc:
        raise UsageError(f"probing {target} ended the process: {exc}") from None
    if path is not None and result.status >= 400:
        print(f"ctxlab: note: {method.upper()} {path} answered {result.status}; the layers were still probed", file=sys.stderr)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        render.diagnosis(result, _console())
    return 0 if not result.culprits else 1


def _is_click_error(exc: Exception) -> bool:
    # Typer may bring its own copy of click, so match the interface.
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so the same cleanup runs and
    the partial report is printed; the exit code is then 143."""


_terminated = False


def _terminate(signum, frame) -> None:
    global _terminated
    _terminated = True
    raise Terminated


def main() -> None:
    import signal

    from ctxlab.terminal import fit_streams

    signal.signal(signal.SIGTERM, _terminate)
    fit_streams()
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        print(f"ctxlab: error: {exc}", file=sys.stderr)
        code = getattr(exc, "exit_code", 2)
    except Terminated:
        code = 143
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`ctxlab run --all | head -1`): stop quietly,
        # with the status of a process that SIGPIPE ended, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        if type(exc).__name__ == "Abort":
            code = 130
        else:
            print(f"ctxlab: error: {exc.format_message()}", file=sys.stderr)
            code = exc.exit_code
    if _terminated:  # also where Ctrl-C is the normal way to stop (serve)
        code = 143
    _exit(code or 0)


def _exit(code: int) -> None:
    """Exit, even if the user's app left a non-daemon thread running
    (`probe` imports it into this process): waiting for it would hang."""
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
