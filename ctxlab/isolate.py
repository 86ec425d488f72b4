"""Run a scenario, a served app or a user's app in a child process that can
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

The child inherits the frameworks and scenario modules the parent has
already imported.  Still, the fork, the child's first writes to memory it
shares with the parent and its report sent back cost about 15 ms a
scenario (README, Performance); one long-lived worker per run would not.  Where
`fork` does not exist (Windows) the work runs in process, unguarded.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, TypeVar

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
    child.start()
    sending.close()  # so that the child's end is the only one: EOF when it dies
    try:
        if not receiving.poll(deadline):
            raise TimedOut(f"no answer within {deadline:g}s")
        kind, value = receiving.recv()
    except EOFError:
        raise Died(_death(child)) from None
    finally:
        _kill(child)
        receiving.close()
    if kind == "raise":
        raise value
    return value


def _child(work: Callable[[], object], sending, quiet_stdout: bool) -> None:
    # Its own process group: the parent decides when it stops, and a
    # terminal's Ctrl-C reaches the parent alone.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if quiet_stdout:
        os.dup2(2, 1)
    try:
        answer = ("ok", work())
    except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
        answer = ("raise", exc)
    try:
        sending.send(answer)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
        sending.send(("raise", RuntimeError(f"{type(exc).__name__}: {exc}")))
    # Threads the app left behind (even non-daemon ones) must not keep the
    # child alive, nor run the parent's atexit handlers.
    os._exit(0)


def _kill(child) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    child.join()


def _death(child) -> str:
    child.join(1)
    code = child.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code} without a report"
