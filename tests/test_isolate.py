"""The forked child and the worker (ctxlab.isolate) on their own: what
cannot cross the pipe, and which modules the parent imports for the next
worker.  The scenarios they run are in test_engine.py and test_hostile.py."""

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ctxlab import isolate

TESTS = Path(__file__).parent


def returns_a_lock():
    return threading.Lock()


def raises_holding_a_lock():
    raise ValueError(threading.Lock())


def why_pickle_refuses(value) -> str:
    with pytest.raises(Exception) as refused:
        pickle.dumps(value)
    return f"{type(refused.value).__name__}: {refused.value}"


@pytest.mark.parametrize(
    "work, unpicklable", [(returns_a_lock, threading.Lock()), (raises_holding_a_lock, ValueError(threading.Lock()))]
)
def test_what_cannot_be_pickled_comes_back_as_an_error_saying_why(work, unpicklable):
    """A result or an exception the pipe cannot carry is an error naming
    pickle's reason, from the child and from the worker, which then goes on
    serving."""
    reason = why_pickle_refuses(unpicklable)
    with pytest.raises(RuntimeError) as raised:
        isolate.call(work, deadline=60)
    assert str(raised.value) == reason
    with isolate.Worker() as worker:
        with pytest.raises(RuntimeError) as raised:
            worker.call(work, deadline=60)
        assert str(raised.value) == reason
        first = worker.call(os.getpid, deadline=60)
        assert worker.call(os.getpid, deadline=60) == first != os.getpid()


def in_a_fresh_python(script: str, tmp_path) -> list[str]:
    """What `script` prints, run by this Python with `tmp_path` and these
    tests on sys.path."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(tmp_path), str(TESTS)]),
        },
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


# Modules of the standard library that nothing here imports before the test.
UNUSED = ["colorsys", "wave", "sched"]


def test_preload_imports_only_libraries_not_yet_imported(tmp_path):
    """The parent imports the standard library's and installed packages'
    modules a worker used, never a user's or a scenario's own module (whose
    import belongs in the worker, in its context); one that fails to import
    here (Windows only) is skipped, not the end of the rest."""
    (tmp_path / "users_module.py").write_text("")
    seen = in_a_fresh_python(
        f"""
        import importlib, sys
        names = ["sys", "asyncio.windows_utils", {UNUSED[0]!r}, "users_module", {UNUSED[1]!r}]
        try:
            importlib.import_module("asyncio.windows_utils")
        except ImportError:
            print("windows_utils-refused")
        print(*[name in sys.modules for name in names])
        from ctxlab.isolate import preload
        preload(names)
        print(*[name in sys.modules for name in names])
        """,
        tmp_path,
    )
    assert seen == [
        "windows_utils-refused",
        *["True", "False", "False", "False", "False"],
        *["True", "False", "True", "False", "True"],
    ]


def changes_the_process(name: str) -> str:
    """Imports `name`, and leaves os.environ changed: the worker must end."""
    import importlib

    importlib.import_module(name)
    os.environ["CTXLAB_TEST_CHANGED"] = "1"
    return name


def test_a_worker_that_changed_the_process_hands_its_libraries_to_the_next(tmp_path):
    """After a call that changed the worker, the parent imports the libraries
    that call imported (not a user's module), and the next call gets a new
    worker."""
    (tmp_path / "users_module.py").write_text("")
    seen = in_a_fresh_python(
        f"""
        import os, sys
        from ctxlab.isolate import Worker
        from test_isolate import changes_the_process
        with Worker() as worker:
            first = worker.call(os.getpid, deadline=60)
            worker.call(changes_the_process, {UNUSED[2]!r}, deadline=60)
            worker.call(changes_the_process, "users_module", deadline=60)
            print({UNUSED[2]!r} in sys.modules, "users_module" in sys.modules, "CTXLAB_TEST_CHANGED" in os.environ)
            print(worker.call(os.getpid, deadline=60) != first)
        """,
        tmp_path,
    )
    assert seen == ["True", "False", "False", "True"]


def test_a_worker_whose_parent_closed_its_end_ends_quietly(tmp_path):
    """Where the kernel cannot kill the worker with its parent (no
    PR_SET_PDEATHSIG off Linux), the parent's death reaches the worker as
    the end of its pipe: it exits 0, without a traceback.  Here the pipe is
    closed by hand, the worker left alive."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os
            from ctxlab.isolate import Worker
            worker = Worker()
            worker.call(os.getpid, deadline=60)
            child = worker._child
            worker._pipe.close()
            child.join(60)
            print(child.exitcode)
            """
        )],
        capture_output=True, text=True,
    )  # fmt: skip
    assert (done.stdout.split(), done.stderr) == (["0"], "")
