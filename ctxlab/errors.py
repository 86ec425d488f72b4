"""Every error ctxlab reports to its user, in one hierarchy.

    CtxlabError                exit 2 unless a subclass says otherwise
    ├── UsageError             a bad command line
    ├── ScenarioError          a scenario not found, not loadable, badly declared
    ├── ReportFileError        a saved report that cannot be read or used
    │   └── TraceFileError     a saved trace that cannot be read or used
    ├── DiagnoseError          a user's app that cannot be probed
    ├── MatrixError            a matrix column that cannot be built or run
    ├── OutputFileError        a file the user named cannot be written
    └── RunFailed              exit 3: running a scenario went wrong
        ├── ServerFailed       a server did not start, or broke a connection
        ├── LifespanFailed     the app's lifespan startup or shutdown failed
        ├── UnexpectedResponse the app answered another status than expected
        ├── TimedOut           a child process (ctxlab.isolate) missed its deadline
        └── Died               a child process ended without answering

`main()` catches CtxlabError once and prints `ctxlab: error: <message>`, so
each message is one line saying what is wrong and, where it can, what
would be right. Errors raised while a scenario runs (RunFailed) normally
become that scenario's `error` status instead; they only reach `main()`
when no report can hold them.
"""

from __future__ import annotations


class CtxlabError(Exception):
    """Base class of ctxlab's errors: a one-line message and an exit code."""

    exit_code: int = 2


class UsageError(CtxlabError):
    """Bad input on the command line: an unknown name, a bad option value."""


class ScenarioError(CtxlabError):
    """A scenario cannot be found, loaded or is badly declared."""


class ReportFileError(CtxlabError):
    """A saved report (snapshot, baseline) that cannot be read or used."""


class TraceFileError(ReportFileError):
    """A trace saved with `ctxlab trace -o` that cannot be read or compared."""


class DiagnoseError(CtxlabError):
    """The target of `ctxlab probe` cannot be imported or probed."""


class MatrixError(CtxlabError):
    """A `ctxlab matrix` column that cannot be built or run."""


class OutputFileError(CtxlabError):
    """A file the user asked for (`-o`, `--junit`) cannot be written."""


class RunFailed(CtxlabError):
    """Running a scenario went wrong: a crash, not a drift."""

    exit_code = 3


class ServerFailed(RunFailed):
    """A real server did not start, or closed a connection mid-exchange."""


class LifespanFailed(RunFailed):
    """The app's lifespan startup or shutdown failed, or the app returned."""


class UnexpectedResponse(RunFailed):
    """A request was answered with another status than the scenario expects."""


def described(exc: BaseException) -> str:
    """`ValueError: bad`, or the name alone when the exception says nothing
    more (`KeyboardInterrupt`, not `KeyboardInterrupt: `)."""
    said = str(exc)
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__
