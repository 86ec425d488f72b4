"""One error hierarchy: every ctxlab error is a CtxlabError, documented, and
ends as one line on stderr with its exit code."""

import importlib
import inspect
import pkgutil

from conftest import ctxlab

import ctxlab as package
from ctxlab.errors import CtxlabError


def ctxlab_exceptions():
    """Every exception class that a ctxlab module defines."""
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name == "__main__":
            continue
        module = importlib.import_module(f"ctxlab.{module_info.name}")
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__.startswith("ctxlab"):
                yield value


def test_every_error_is_a_documented_ctxlab_error():
    errors = set(ctxlab_exceptions())
    assert len(errors) > 5
    for error in errors:
        assert issubclass(error, CtxlabError), error
        assert error.__doc__, error  # a class's docstring is not inherited
        assert error.exit_code in (2, 3), error


def test_an_error_prints_one_line_and_its_exit_code(tmp_path):
    broken = tmp_path / "report.json"
    broken.write_text("{")
    code, out, err = ctxlab("diff", str(broken))
    assert (code, out) == (2, "")
    assert err == f"ctxlab: error: {broken} is not JSON (line 1: Expecting property name enclosed in double quotes)\n"


def test_an_exception_that_says_nothing_is_named_alone():
    """`KeyboardInterrupt`, not `KeyboardInterrupt: `, in every message that
    quotes an app's exception."""
    from ctxlab.errors import described

    assert described(ValueError("bad")) == "ValueError: bad"
    assert described(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert described(KeyError("k")) == "KeyError: 'k'"


def test_a_request_that_raised_a_bare_exception_is_named_without_a_colon(tmp_path):
    (tmp_path / "bare.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import Route\n"
        "async def home(request):\n"
        "    raise KeyboardInterrupt\n"
        "app = Starlette(routes=[Route('/', home)])\n"
    )
    code, out, err = ctxlab("trace", "bare:app", "--app-dir", str(tmp_path))
    assert (code, out) == (2, "") and "failed (request 1: KeyboardInterrupt) and" in err


def test_a_scenario_that_cannot_run_exits_3_not_2(tmp_path):
    """A RunFailed that reaches main() (explain of a scenario whose module
    raises as it imports) is a crash, exit 3, not a usage error."""
    (tmp_path / "crash.py").write_text(
        'from ctxlab.scenario import scenario\n\nraise RuntimeError("module broken")\n\n\n'
        '@scenario("crash-at-import", expect={})\ndef f():\n    pass\n'
    )
    code, out, err = ctxlab("explain", "crash-at-import", "--scenarios", str(tmp_path))
    assert (code, out) == (3, "")
    assert (
        err
        == f"ctxlab: error: cannot load 'crash-at-import' from {tmp_path / 'crash.py'}: RuntimeError: module broken\n"
    )
