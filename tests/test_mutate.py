"""`make mutate`'s choice of tests for a mutant (mutation/mutate.py): the
tests the coverage map says run its line go first, and every test runs
whenever those pass, so the map can only change how long a run takes,
never which mutants count as killed."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("mutate", Path(__file__).parent.parent / "mutation" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutate)

SOURCE = textwrap.dedent(
    """\
    LIMIT = 3


    @decorate(1)
    def outer(x, y=2):
        total = (x +
                 y)
        if total > LIMIT:
            return total
        elif total < 0:
            return 0
        try:
            risky()
        except ValueError:
            pass

        def inner(z=4):
            return z
        return inner
    """
)


def lines_of(line: int) -> tuple[list[int], bool]:
    watched, in_function = mutate.statement_lines(ast.parse(SOURCE), line)
    return list(watched), in_function


@pytest.mark.parametrize(
    ("line", "watched", "in_function"),
    [
        (1, [1], False),  # a constant, set at import
        (4, [4, 5], False),  # the decorator and the signature run at import
        (5, [4, 5], False),
        (6, [6, 7], True),  # a statement on two lines
        (7, [6, 7], True),
        (8, [8], True),  # an if's test, not its body
        (10, [10], True),  # elif
        (14, [14], True),  # an except clause, between the try's statements
        (17, [17], True),  # a def inside a function runs when the function does
    ],
)
def test_the_lines_that_run_with_a_mutated_line(line, watched, in_function):
    assert lines_of(line) == (watched, in_function)


def test_changed_lines_are_numbered_as_in_the_original():
    original = "a\nb\nc\n"
    assert mutate.changed_lines(original, "a\nB\nc\n") == {2}
    assert mutate.changed_lines(original, "a\nc\n") == {2}
    assert mutate.changed_lines(original, "a\nb\nx\nc\n") == {2, 3}
    assert mutate.changed_lines(original, original) == set()


COVERMAP = {
    "order": ["t::quick", "t::slower", "t::cli"],
    "lines": {"6": ["t::cli", "t::quick"], "8": ["t::slower"]},
}


def test_the_tests_of_a_line_in_the_order_the_module_runs_them():
    assert mutate.tests_running(SOURCE, {7}, COVERMAP) == ["t::quick", "t::cli"]
    assert mutate.tests_running(SOURCE, {7, 8}, COVERMAP) == ["t::quick", "t::slower", "t::cli"]


def test_a_line_that_runs_at_import_needs_every_test():
    assert mutate.tests_running(SOURCE, {1}, COVERMAP) is None
    assert mutate.tests_running(SOURCE, {1, 8}, COVERMAP) is None
    assert mutate.tests_running(SOURCE, set(), COVERMAP) is None


def test_a_line_no_test_runs_has_no_tests():
    assert mutate.tests_running(SOURCE, {9}, COVERMAP) == []
    assert mutate.tests_running(SOURCE, {8, 9}, COVERMAP) == ["t::slower"]


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A scratch copy as `make mutate` makes it: the module as it began, a
    mutant of it, a coverage map and two tests, one of which fails."""
    (tmp_path / "ctxlab").mkdir()
    (tmp_path / "module.py.orig").write_text(SOURCE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_it.py").write_text(
        "def test_fails():\n    assert False\n\ndef test_passes():\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def mutant_verdict(scratch: Path, mutation: tuple[str, str], tests: list[str], **options) -> tuple[int, bool]:
    """The exit code of the mutant that replaces `mutation[0]` (the first
    time it occurs), and whether every test ran."""
    mutated_line = next(n for n, line in enumerate(SOURCE.splitlines(), 1) if mutation[0] in line)
    lines = SOURCE.splitlines()
    lines[mutated_line - 1] = lines[mutated_line - 1].replace(*mutation)
    (scratch / "ctxlab" / "demo.py").write_text("\n".join(lines) + "\n")
    (scratch / mutate.COVERMAP).write_text(json.dumps({"order": tests, "lines": {str(mutated_line): tests}}))
    marker = scratch / "every-test-ran"
    marker.unlink(missing_ok=True)
    every_test = [sys.executable, "-c", f"open({str(marker)!r}, 'w'); raise SystemExit(0)"]
    return mutate.test_mutant("demo", every_test, **options), marker.exists()


def test_a_failing_chosen_test_kills_the_mutant_at_once(scratch):
    assert mutant_verdict(scratch, (">", "<"), ["tests/test_it.py::test_fails"]) == (1, False)


def test_chosen_tests_that_pass_let_the_mutant_survive(scratch):
    assert mutant_verdict(scratch, (">", "<"), ["tests/test_it.py::test_passes"]) == (0, False)


def test_with_other_pythons_every_test_decides_after_the_chosen_pass(scratch, capsys):
    """--also: the map is made on one Python, and misses what only the
    others run: every test runs, on every Python, before a mutant survives."""
    decides = {"every_test_decides": True}
    assert mutant_verdict(scratch, (">", "<"), ["tests/test_it.py::test_passes"], **decides) == (0, True)
    assert mutant_verdict(scratch, (">", "<"), [], **decides) == (0, True)
    assert mutant_verdict(scratch, (">", "<"), ["tests/test_it.py::test_fails"], **decides) == (1, False)
    assert mutate.NO_TEST_RUNS_IT not in capsys.readouterr().out


def test_a_chosen_test_pytest_cannot_find_leaves_the_verdict_to_every_test(scratch):
    assert mutant_verdict(scratch, (">", "<"), ["tests/test_it.py::test_gone"]) == (0, True)


def test_a_mutant_at_import_runs_every_test(scratch):
    assert mutant_verdict(scratch, ("= 3", "= 4"), ["tests/test_it.py::test_fails"]) == (0, True)


def test_a_mutant_no_test_runs_survives_without_a_test(scratch, capsys):
    assert mutant_verdict(scratch, (">", "<"), []) == (0, False)
    assert capsys.readouterr().out == mutate.NO_TEST_RUNS_IT + "\n"


def lines_measured(tmp_path: Path, module_source: str, program: str, test: str) -> dict[int, set[str]]:
    """Run `program` as `make mutate`'s coverage map runs a test's process
    (under node id `test`, measuring the module `work`): the tests each
    line of `work` counted for."""
    import subprocess

    import coverage

    module = tmp_path / "work.py"
    module.write_text(module_source)
    environment = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{tmp_path}:{mutate.STARTUP}",
        "CTXLAB_COVERMAP": str(tmp_path / "data"),
        "CTXLAB_COVERMAP_MODULE": str(module),
        "CTXLAB_COVERMAP_TEST": test,
    }
    subprocess.run([sys.executable, "-c", program], env=environment, check=True, timeout=30)
    seen: dict[int, set[str]] = {}
    for part in tmp_path.glob("data.*"):
        measured = coverage.CoverageData(basename=str(part))
        measured.read()
        for line, contexts in measured.contexts_by_lineno(str(module)).items():
            seen.setdefault(line, set()).update(contexts)
    return seen


def test_the_coverage_map_sees_a_forked_child_that_ends_with_os_exit(tmp_path):
    """ctxlab works in forked children that end with os._exit (isolate.py):
    what they run counts for the test that was running when they forked."""
    program = (
        "import os, work\n"
        "work.in_parent()\n"
        "os.environ['CTXLAB_COVERMAP_TEST'] = 'tests/t.py::second'\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    work.in_child()\n"
        "    os._exit(0)\n"
        "os.waitpid(child, 0)\n"
    )
    source = "def in_parent():\n    return 1\n\n\ndef in_child():\n    return 2\n"
    seen = lines_measured(tmp_path, source, program, "tests/t.py::first")
    assert seen[2] == {"tests/t.py::first"}
    assert seen[6] == {"tests/t.py::second"}


def test_the_coverage_map_sees_a_forked_child_killed_once_it_has_answered(tmp_path):
    """isolate.call kills its child as soon as the answer arrives: what the
    child ran before it sent the answer is in the map all the same."""
    program = (
        "import multiprocessing, os, signal, time, work\n"
        "receiving, sending = multiprocessing.Pipe(duplex=False)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    sending.send(work.answer())\n"
        "    time.sleep(60)\n"
        "assert receiving.recv() == 42\n"
        "os.kill(child, signal.SIGKILL)\n"
        "os.waitpid(child, 0)\n"
    )
    seen = lines_measured(tmp_path, "def answer():\n    return 42\n", program, "tests/t.py::it")
    assert seen.get(2) == {"tests/t.py::it"}


def test_every_test_a_module_names_is_there():
    """A renamed test left in TESTS ends `make mutate` before its first
    mutant ("the tests fail before any mutation": pytest finds no such test)."""
    tests = Path(__file__).parent
    for module, names in mutate.TESTS.items():
        for name in names:
            file, *inside = name.split("::")
            assert (tests / file).is_file(), f"{module}: {name}"
            defined = {
                node.name
                for node in ast.walk(ast.parse((tests / file).read_text()))
                if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            }
            assert {part.partition("[")[0] for part in inside} <= defined, f"{module}: {name}"  # [a parameter's id]
