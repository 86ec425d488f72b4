"""What every command runs: select scenarios, run each, compare, collect.

The command line (`run`, `check`, `snapshot`, `diff`, `explain`) and the
tests call these; they print nothing.  Importing this module stays as cheap
as `ctxlab list` needs: the runner and the web frameworks load only when a
scenario runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ctxlab.config import RunConfig, missing, settled
from ctxlab.errors import ReportFileError, UsageError, described
from ctxlab.scenario import Entry, Servers, catalog, suggest

if TYPE_CHECKING:
    from ctxlab import isolate
    from ctxlab.report import Change, Report, ScenarioReport
    from ctxlab.scenario import Scenario


def entries(directories: Iterable[Path] | None = None) -> dict[str, Entry]:
    """The catalog: bundled and plugin scenarios, then those in `directories`."""
    return catalog(*(directories or ()))


def tagged(chosen: list[Entry], tags: Sequence[str], known: Iterable[Entry] | None = None) -> list[Entry]:
    """The entries with any of `tags` (all of them when no tag is given);
    a tag no scenario in `known` (default: `chosen`) has is a usage error."""
    names = sorted({tag for entry in (chosen if known is None else known) for tag in entry.tags})
    for tag in tags:
        if tag not in names:
            raise UsageError(f"unknown tag {tag!r}; known tags: {', '.join(names)}")
    return [entry for entry in chosen if not tags or set(tags) & set(entry.tags)]


def select(
    names: Sequence[str], all_: bool, tags: Sequence[str], directories: Iterable[Path] | None = None
) -> list[Entry]:
    """The catalog entries a command line asks for, in the order asked."""
    found = entries(directories)
    if names and all_:
        raise UsageError("give scenario names or --all, not both")
    if not (names or all_ or tags):
        raise UsageError("name a scenario, or use --all or --tag (see 'ctxlab list')")
    for name in names:
        if name not in found:
            raise UsageError(f"unknown scenario {name!r}{suggest(name, found)}")
    chosen = [found[name] for name in dict.fromkeys(names)] if names else list(found.values())
    return tagged(chosen, tags, known=found.values())


def run_entry(entry: Entry, config: RunConfig) -> ScenarioReport:
    """Load, run and compare one catalog entry under `config`.

    Never raises for the scenario's own faults: a module that cannot be
    loaded, a crash or a timeout is the report's `error` status, a server or
    package version it does not support its `skipped` status.
    """
    from ctxlab import report, runner
    from ctxlab.scenario import Env, load

    if config.server not in entry.servers:
        return report.skipped(entry.name, f"runs only on {', '.join(entry.servers)}", config)
    unavailable = missing(config)
    if unavailable:
        return report.skipped(entry.name, unavailable, config)
    try:
        scenario = load(entry)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken module is that scenario's error
        error = f"cannot load: {described(exc)}"
        return report.ScenarioReport(entry.name, report.Status.ERROR, error=error, config=config)
    unmet = scenario.unmet_requirement(Env.of(config))
    if unmet:
        return report.skipped(entry.name, unmet, config)
    config = scenario.settle(config)
    return report.compare(scenario, runner.run(scenario, config), config)


def run_guarded(entry: Entry, config: RunConfig, worker: isolate.Worker | None = None) -> ScenarioReport:
    """`run_entry` in a child process (`worker`, else a worker of its own)
    that is killed at the scenario's timeout (see ctxlab.isolate): a hang of
    any kind, even one that blocks the event loop or the module's import,
    becomes that scenario's error."""
    import time

    from ctxlab import isolate, report

    if config.server not in entry.servers or missing(config):
        return run_entry(entry, config)  # skipped, without importing anything
    if worker is None:
        with prepared_worker([entry], config.server) as own:
            return run_guarded(entry, config, own)
    started = time.perf_counter()
    # The module is imported first, in the worker, to learn the scenario's
    # timeout; the import gets as long as the module's source declares.
    doing, timeout = IMPORTING, entry.timeout
    try:
        # None: it cannot be loaded, and run_entry (in the worker) says why.
        timeout = worker.call(_timeout, entry, deadline=timeout + isolate.GRACE, checked=False) or entry.timeout
        doing = ""
        return worker.call(_run_in_fresh_context, entry, config, deadline=timeout + isolate.GRACE)
    except (isolate.TimedOut, isolate.Died) as exc:
        why = _guard_failure(exc, timeout, doing)
        return report.ScenarioReport(entry.name, report.Status.ERROR, (time.perf_counter() - started) * 1000, why,
                                     config=config)  # fmt: skip


def _guard_failure(exc: isolate.RunFailed, timeout: float, doing: str) -> str:
    """What a scenario's error says when its child was killed at `timeout`
    (TimedOut) or died (Died), while `doing` (importing its module) or
    running it."""
    from ctxlab import isolate

    if isinstance(exc, isolate.TimedOut):
        return f"timed out after {timeout:g}s{' ' + doing if doing else ''} (killed)"
    return f"crashed{' ' + doing if doing else ''}: {exc}"


def prepared_worker(entries: Iterable[Entry], *servers: str) -> isolate.Worker:
    """A worker for `run_guarded` that inherits, already imported, what
    every scenario needs, the servers named and the libraries the bundled
    `entries` import, instead of importing them again in each worker a run
    may need.  The modules of scenarios are never imported here (an import
    that hangs must hang in the worker), nor what a directory of the
    user's imports: only the bundled scenarios' libraries are known."""
    from ctxlab import isolate, labels, report, runner  # noqa: F401
    from ctxlab.scenario import bundled_dir

    if "uvicorn" in servers:
        import uvicorn  # noqa: F401
    bundled = bundled_dir()
    isolate.preload(sorted({name for e in entries if e.path.parent == bundled for name in e.imports}))
    return isolate.Worker()


def _timeout(entry: Entry) -> float | None:
    """The scenario's timeout, its module imported (in the worker's own
    context: values it sets at import are part of what the scenario shows);
    None when it cannot be loaded."""
    from ctxlab.scenario import load

    try:
        return load(entry).timeout
    except (Exception, SystemExit):  # noqa: BLE001 - run_entry reports why it cannot load
        return None


def _run_in_fresh_context(entry: Entry, config: RunConfig) -> ScenarioReport:
    """run_entry in a copy of the current context, so that what the
    scenario's factory sets there is gone for the next scenario."""
    import contextvars

    return contextvars.copy_context().run(run_entry, entry, config)


IMPORTING = "importing its module"  # what a scenario's error names when its import hung


def load_or_crash(entry: Entry, guarded: ScenarioReport | None = None) -> Scenario:
    """The entry's Scenario; a module that fails to import is a crash (exit
    3), and so is one whose import hung or ended the process in `guarded`,
    its `run_guarded` report (it is not imported here again: it would hang,
    or end ctxlab)."""
    from ctxlab.errors import RunFailed
    from ctxlab.scenario import load

    error = guarded.error if guarded is not None else None
    if error and (error.endswith(f"{IMPORTING} (killed)") or error.startswith(f"crashed {IMPORTING}:")):
        raise RunFailed(f"cannot load {entry.name!r} from {entry.path}: {guarded.error}")
    try:
        return load(entry)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of the scenario's own module
        raise RunFailed(f"cannot load {entry.name!r} from {entry.path}: {described(exc)}") from None


def load_checked(entry: Entry) -> Scenario:
    """`load_or_crash`, for a command that then runs the scenario itself
    (`serve`): its module is imported first in a child, within the timeout
    its source declares, so that an import that hangs or ends the process
    is a crash (exit 3) here, not a hang or a death of ctxlab."""
    from ctxlab import isolate
    from ctxlab.errors import RunFailed

    with isolate.Worker() as worker:
        try:
            worker.call(_timeout, entry, deadline=entry.timeout + isolate.GRACE, checked=False)
        except (isolate.TimedOut, isolate.Died) as exc:
            why = _guard_failure(exc, entry.timeout, IMPORTING)
            raise RunFailed(f"cannot load {entry.name!r} from {entry.path}: {why}") from None
    return load_or_crash(entry)


def execute(
    entries: Iterable[Entry],
    configs: Sequence[RunConfig],
    progress: Callable[[Entry, list[ScenarioReport]], None] | None = None,
) -> Report:
    """Run the entries one by one, each under every config in turn, calling
    `progress` with each entry's reports; Ctrl-C keeps what has finished
    (the report says it was interrupted)."""
    from ctxlab.report import Report

    results = Report([], servers=tuple(c.server for c in configs), spec_version=configs[0].spec_version)
    try:
        entries = list(entries)
        with prepared_worker(entries, *(c.server for c in configs)) as worker:
            for entry in entries:
                outcomes = [run_guarded(entry, config, worker) for config in configs]
                results.scenarios.extend(outcomes)
                if progress:
                    progress(entry, outcomes)
    except KeyboardInterrupt:
        results.interrupted = True
    return results


def load_baseline(path: Path, directories: Iterable[Path] | None = None, document: Any = None) -> dict[str, Any]:
    """A saved report (snapshot, baseline; `document`, if it was read
    already) whose scenarios are all in the catalog: one the user's
    --scenarios provided must be given again."""
    from ctxlab.report import load_report

    before = load_report(path, Servers, document)
    found = entries(directories)
    for name in dict.fromkeys(s["name"] for s in before["scenarios"]):
        if name not in found:
            raise ReportFileError(f"{path} names scenario {name!r}, which is not in the catalog"
                                  f"{suggest(name, found, otherwise='')}; if it came from a directory of your own, "
                                  "pass --scenarios DIR")  # fmt: skip
    return before


def rerun(before: dict[str, Any], directories: Iterable[Path] | None = None) -> Report:
    """Run a saved report's scenarios again, on the servers and with the
    spec_version it names; a scenario no longer in the catalog is left out
    (comparing then shows it as not run)."""
    from ctxlab.report import runs

    found = entries(directories)
    names = dict.fromkeys(s["name"] for s in before["scenarios"])
    servers = list(dict.fromkeys(server for _, server in runs(before))) or ["asgi"]
    # A report does not record the loop and parser: each server's default,
    # as when `snapshot` ran without --loop and --http.
    configs = [settled(RunConfig(server, spec_version=before.get("spec_version"))) for server in servers]
    return execute([found[name] for name in names if name in found], configs)


def baseline_changes(before: dict[str, Any], results: Report) -> tuple[list[Change], int]:
    """What changed from the saved report `before` to `results`, over the
    servers `results` ran on, and how many runs of `before` were on other
    servers (so not compared)."""
    from ctxlab.report import diff, runs

    kept = [s for (_, server), s in runs(before).items() if server in results.servers]
    return diff({**before, "scenarios": kept}, results.to_json()), len(before["scenarios"]) - len(kept)
