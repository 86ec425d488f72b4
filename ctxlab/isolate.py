"""Run scenarios, a served app or a user's app in a child process that can
always be stopped.

Why a child process and not a watchdog thread: the hangs this guards
against do not cooperate.  `time.sleep` in an `async` endpoint blocks the
event loop, so no asyncio timeout (and no Ctrl-C handler on the loop) can
fire; an app factory can block before there is a loop at all; a `def`
endpoint sleeping in a worker thread, or a non-daemon thread the app
started, keeps the interpreter from exiting.  A watchdog thread could raise
in the main thread only between bytecodes, and could never end a thread
stuck in C code, so the hung work would stay in the process, holding its
port and its threads.  A forked child is killed outright, with every thread
and socket it holds, so the parent can report the timeout, run the next
scenario, print the report and exit, and Ctrl-C or SIGTERM always reach a
process that is waiting on nothing but a pipe.

`call` forks a child for one piece of work (probe, trace, serve).  A run of
many scenarios uses one `Worker` instead: a child forked once, after the
parent has imported the runner and the frameworks, that runs the scenarios
one after another and is replaced only when one does not answer in time,
dies, or leaves the process changed.  A fork per scenario costs about
15 ms here (a bare `os.fork` of this 50 MB process alone takes ~9 ms in
this sandbox), more than a small scenario's whole run; and each fresh
child would redo the lazy set-up (imports inside functions, the shared
HTTP client settings) the previous one did.

Why reusing a process does not change what the next scenario observes:
- each scenario runs on a fresh event loop (ctxlab.runner), and in a copy
  of the worker's context (ctxlab.engine), so a ContextVar its factory
  sets is gone afterwards; its module is imported in the worker's own
  context, as the per-scenario children inherited it from the parent
  (values set at import are part of what a scenario shows);
- after each scenario the worker compares what it could leave behind in
  the process with how the worker started: threads still alive (a
  non-daemon thread, an executor never shut down, a pool thread whose own
  context or thread-locals hold values; threads that are ending get 50 ms
  to end), the event loop policy, trace and profile hooks, `sys.path`,
  `os.environ`, the working directory, and modules removed or replaced in
  `sys.modules`.  On any difference it answers and exits, and the next
  scenario gets a fresh worker forked from the parent, which has never run
  a scenario.  Three bundled scenarios leave an idle pool thread behind
  (sync-to-async-context, executor-thread-leak, thread-inherit-context),
  so a run --all forks four workers, not one.  Before it forks again the
  parent imports the libraries (standard library and installed
  distributions, never a scenario's module) the old worker had imported,
  so that each new worker does not import them all over again.
What it cannot see is a library patched in place (a function replaced on a
class); no bundled scenario does that: run --all gives the same
observations, durations aside, in a worker, in a child per scenario and all
in one process (tests/test_engine.py, which also shows that a factory's
ContextVar and a leftover pool thread do not reach the next scenario).

A fresh worker per scenario (a fork of a warm worker) was the other way:
simpler to trust, but it is the fork that costs here, not the imports.

Where `fork` does not exist (Windows) the work runs in process, unguarded.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterable, TypeVar

from ctxlab.errors import RunFailed

T = TypeVar("T")

# Time a child gets beyond its scenario's own timeout, to cancel its tasks
# and send its report, before it is killed.
GRACE = 2.0


class TimedOut(RunFailed):
    """The child did not answer before its deadline and was killed."""


class Died(RunFailed):
    """The child ended without answering (killed, or os._exit in the app)."""


def call(work: Callable[[], T], deadline: float | None = None, quiet_stdout: bool = False) -> T:
    """`work()`, computed in a forked child: its result, or what it raised.

    The child is killed, with its process group, once it has answered, when
    `deadline` seconds pass, or when the parent is interrupted (Ctrl-C or
    SIGTERM raise here as usual).  With `quiet_stdout` the child's stdout
    goes to stderr, so that a user's app printing cannot spoil a JSON
    document the parent prints."""
    if not hasattr(os, "fork"):
        return work()
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, sending, quiet_stdout), daemon=True)
    try:
        _start(child)
        sending.close()  # so that the child's end is the only one: EOF when it dies
        if not receiving.poll(deadline):
            raise TimedOut(f"no answer within {deadline:g}s")
        kind, value = receiving.recv()
    except EOFError:
        raise Died(_death(child)) from None
    finally:
        _kill(child)
        receiving.close()
    return _result(kind, value)


class Worker:
    """A forked child that computes calls one after another: `call` as
    above, without a fork per call.

    It is forked at the first call, from the process as it is then, and
    replaced when a call times out (killed with its process group), when
    it dies, when the parent is interrupted during a call, and when a call
    left the process changed (see the module's docstring).  `close()`, or
    leaving the `with` block, kills it."""

    def __init__(self) -> None:
        self._child: Any = None
        self._pipe: Any = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, function: Callable[..., T], *args: Any, deadline: float | None = None, checked: bool = True) -> T:
        """`function(*args)` in the worker: its result, or what it raised.
        `function` and `args` are pickled, so `function` must be importable.
        With `checked` False the worker skips looking for changes after this
        call (about 0.15 ms): for a call that prepares the next, which then
        answers for both."""
        if not hasattr(os, "fork"):
            return function(*args)
        if self._child is None:
            self._start()
        try:
            self._pipe.send((function, args, checked))
            if not self._pipe.poll(deadline):
                raise TimedOut(f"no answer within {deadline:g}s")
            kind, value, libraries = self._pipe.recv()
        except (EOFError, BrokenPipeError):
            death = _death(self._child)
            self.close()
            raise Died(death) from None
        except BaseException:  # a timeout, Ctrl-C, SIGTERM: whatever it was doing is abandoned
            self.close()
            raise
        if libraries is not None:  # the call changed the process, which has ended
            self.close()
            preload(libraries)
        return _result(kind, value)

    def close(self) -> None:
        """Kill the worker (if any), with its process group."""
        if self._child is not None:
            _kill(self._child)
            self._pipe.close()
            self._child = self._pipe = None

    def _start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        self._child, self._pipe = context.Process(target=_serve, args=(theirs, ours), daemon=True), ours
        try:
            _start(self._child)
        except BaseException:  # Ctrl-C as it forked, or it could not fork
            self.close()
            raise
        finally:
            theirs.close()  # so that the child's end is the only one: EOF when it dies


def _start(child) -> None:
    """Fork `child` with the parent's objects frozen (gc.freeze): garbage
    collections, the child's and the parent's, then leave them alone, and
    with them the memory pages the two processes share, which every
    collection would otherwise copy page by page (in this sandbox about a
    fifth of the CPU time of `run --all`).  They stay frozen: the parent is
    a command that ends with its run, and what it would collect is small."""
    import gc

    from ctxlab.terminal import reader_gone

    try:
        # multiprocessing flushes stdout before it forks, so a reader that
        # went away (`ctxlab run --all | head -1`) may show here first.
        sys.stdout.flush()
    except BrokenPipeError:
        raise reader_gone() from None
    gc.freeze()
    # Ctrl-C or SIGTERM would raise as soon as the fork returns, before
    # multiprocessing has noted the child's pid: the child would run on,
    # unknown, until ctxlab exits.  Held back until it is noted, they raise
    # where the caller kills the child.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        child.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _become_child(quiet_stdout: bool) -> None:
    import multiprocessing

    # Its own process group: the parent decides when it stops, and a
    # terminal's Ctrl-C reaches the parent alone.
    os.setpgid(0, 0)
    _die_with_parent()
    # multiprocessing marks the child daemonic, as the parent asked, so that
    # the parent's exit ends it; a daemonic process may not start processes,
    # and an app's ProcessPoolExecutor would fail.  Its children are in its
    # process group, which the parent kills with it: nothing is orphaned.
    multiprocessing.current_process().daemon = False
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # held back for the fork
    if quiet_stdout:
        os.dup2(2, 1)
        _best_effort_streams()


# Why a write to stderr can fail for good: its reader is gone, or it is
# full (`2> /dev/full`, a full disk, `ulimit -f`), or its terminal is.
_LOST = (errno.EPIPE, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)


class _BestEffortOutput(io.RawIOBase):
    """A file descriptor that writes into /dev/null from the moment it
    cannot be written.  What a scenario or an app prints is not what ctxlab
    reports: a stderr whose reader went away (`2> >(head -1)`), or that is
    full (`2> /dev/full`), must not make the app's next print raise and
    the scenario an error."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data) -> int:
        try:
            return os.write(self.fd, data)
        except OSError as exc:
            if exc.errno not in _LOST:
                raise
            # The descriptors themselves, both (stdout is a copy of stderr
            # here), so that writes past this object (sys.__stderr__, a
            # logging handler made before the fork, os.write) go on quietly too.
            null = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                os.dup2(null, fd)
            os.close(null)
            return len(data)


def _best_effort_streams() -> None:
    """The child's stdout and stderr, written through `_BestEffortOutput`,
    line by line (as stderr is): a worker that hangs is killed, and what
    its app printed before must not die in a buffer with it."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        buffered = io.BufferedWriter(_BestEffortOutput(fd))
        encoding, errors = getattr(old, "encoding", None), getattr(old, "errors", None)
        setattr(sys, name, io.TextIOWrapper(buffered, encoding=encoding, errors=errors, line_buffering=True))


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this child when the parent dies, even
    by SIGKILL (`kill -9`, a CI job's timeout): a child busy in a hung
    scenario never reads the pipe that would tell it, and would run on,
    alone, for ever.  Elsewhere the pipe's EOF is all there is."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # it died before the request was made
        os._exit(0)
    _bury_the_group_with_me()


# Waits, polling once a second, until its parent (the child) has died, then
# kills its process group: the child's, which holds the child and every
# process the app started.  /proc/$$/stat's fourth field is the parent's
# pid, which turns to another (init, a subreaper) once the parent is gone.
UNDERTAKER = """
[ -r /proc/$$/stat ] || exit 0
while read -r _ _ _ parent _ < /proc/$$/stat && [ "$parent" = "$0" ]; do sleep 1 || exit 0; done
kill -KILL 0
"""


def _bury_the_group_with_me() -> None:
    """Leave behind a shell that kills this child's process group once the
    child has died.  The kernel kills the child with the parent (above),
    but not the processes the app started: a ProcessPoolExecutor's workers,
    whether forked, spawned or forked by a fork server, would be orphaned
    and run on.  Nothing in the child can do it (SIGKILL gives it no
    chance), so a process outside it must: a shell costs ~1 ms to start,
    a fork of this process ten times that."""
    try:
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        # Its own PATH: the user's may lack `sleep` (and a loop without it would spin).
        environment = {"PATH": "/usr/bin:/bin"}
        os.posix_spawn("/bin/sh", ["sh", "-c", UNDERTAKER, str(os.getpid())], environment, file_actions=devnull)
    except (OSError, AttributeError):  # no shell; no posix_spawn (not Linux)
        pass


def _child(work: Callable[[], object], sending, quiet_stdout: bool) -> None:
    _become_child(quiet_stdout)
    _send(sending, *_outcome(work))
    _end()


def _end() -> None:
    """End a child (or worker) that is done.  Its strays first: the parent
    may find it gone before it looks, and once orphaned they are no one's
    to find (its own group the undertaker kills).  Then os._exit: threads
    the app left behind (even non-daemon ones) must not keep the child
    alive, nor run the parent's atexit handlers."""
    _kill_each(_strays(os.getpid()))
    os._exit(0)


def _serve(pipe, parents_end) -> None:
    """The worker's loop: compute each call sent and answer it; end (as
    `_child` does) when the parent closes its end, or after answering a call
    that changed the process.  What the scenarios print goes to stderr:
    stdout is the parent's, for the report (`run --json` is one document)."""
    # The fork gave the worker a copy of the parent's end too: while it is
    # open here, the parent's death (off Linux, the only news of it) would
    # never reach the worker as the end of the pipe.
    parents_end.close()
    _become_child(quiet_stdout=True)
    before, started_with = _traces(), set(sys.modules)
    modules = dict(sys.modules)  # as the last check saw them
    while True:
        try:
            function, args, checked = pipe.recv()
        except EOFError:
            _end()
        kind, value = _outcome(function, *args)
        changed = False
        if checked:
            _let_threads_end(before[0])
            # A call may import more modules: that changes none it had.
            changed = _traces() != before or not modules.items() <= sys.modules.items()
            modules = dict(sys.modules)
        # None: unchanged; else the libraries it imported, for the parent to
        # import before it forks the next worker (imported once, not again
        # in every worker that needs them).
        _send(pipe, kind, value, _libraries(set(sys.modules) - started_with) if changed else None)
        if changed:
            _end()


def _let_threads_end(count: int, wait: float = 0.05) -> None:
    """Give threads that are ending (AnyIO's workers stop when their event
    loop's main task ends, a millisecond or two later) a moment to end,
    until `count` threads are left; an idle pool thread that stays is a
    change like any other."""
    import time

    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if threading.active_count() <= count:
            break
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _outcome(work: Callable[..., object], *args: object) -> tuple[str, object]:
    try:
        return "ok", work(*args)
    except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
        return "raise", exc


def _send(pipe, kind: str, value: object, *extra: object) -> None:
    # What the call printed goes out first: a child ends with os._exit,
    # which flushes nothing.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or full stream: the answer matters more
            pass
    try:
        pipe.send((kind, value, *extra))
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
        pipe.send(("raise", RuntimeError(f"{type(exc).__name__}: {exc}"), *extra))


def _traces() -> tuple:
    """What a call could leave behind in the worker that a later call would
    notice (sys.modules aside: modules removed or replaced are looked for
    apart)."""
    import asyncio

    return (
        threading.active_count(),
        id(asyncio.get_event_loop_policy()),
        sys.gettrace(),
        sys.getprofile(),
        list(sys.path),
        dict(os.environ),
        os.getcwd(),
    )


def _libraries(names: Iterable[str]) -> list[str]:
    """Those of the modules `names` (imported) that come from the standard
    library or an installed distribution (not a scenario's own module, nor
    the user's)."""
    return sorted(name for name in names if _is_library(getattr(sys.modules.get(name), "__file__", None)))


def _is_library(file: str | None) -> bool:
    import sysconfig

    roots = tuple({sysconfig.get_path(kind) for kind in ("stdlib", "platstdlib", "purelib", "platlib")})
    return bool(file) and file.startswith(roots)


def preload(names: Iterable[str]) -> None:
    """Import those of the modules `names` that are the standard library's
    or an installed distribution's, here, so that the workers forked after
    inherit them.  One that cannot be imported is left to the worker that
    needs it.  Quietly: a library's warnings on import (starlette's about
    httpx) are about the scenarios' code, or shown by a worker already."""
    import importlib
    import importlib.util
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if name in sys.modules:
                continue
            try:
                spec = importlib.util.find_spec(name.partition(".")[0])
                if spec is not None and _is_library(spec.origin):
                    importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 - only a head start for the workers
                continue


def _result(kind: str, value: Any) -> Any:
    if kind == "raise":
        raise value
    return value


def _kill(child) -> None:
    if child.pid is None:  # never started
        return
    strays = _strays(child.pid)  # found while they are still the child's
    for kill in (os.killpg, os.kill):
        try:
            kill(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    _kill_each(strays)
    child.join()


def _strays(pid: int) -> list[int]:
    """The processes below `pid` in a process group other than its own (a
    process the app started in a session of its own, as a daemon launcher
    does): killing the group misses them, and they would outlive ctxlab."""
    try:
        group = os.getpgid(pid)
    except OSError:
        return []
    strays = []
    for below in _descendants(pid):
        try:
            if os.getpgid(below) != group:
                strays.append(below)
        except OSError:  # gone meanwhile
            continue
    return strays


def _kill_each(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, by the parent each names in /proc (Linux;
    elsewhere none are known)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # The parent is the second field after the name, which is in
                # parentheses and may itself hold spaces and parentheses.
                parent = int(stat.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(parent, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


def _death(child) -> str:
    child.join(1)
    code = child.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code} without a report"
