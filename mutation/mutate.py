"""Mutation testing: plant one small bug at a time in a ctxlab module and
see whether the tests notice.

    make mutate MODULE=report          # or: python mutation/mutate.py report [labels ...]
    make mutate                        # every module in TESTS, one after another
    make mutate MODULE=report AGAIN=1  # only the last run's survivors, with the tests as they are now
    make mutate MODULE=probe ALSO=.venv310/bin/python  # the tests on another Python too

Cosmic Ray writes each mutant into the file itself and runs a test command.
We point it at a scratch copy of the checkout (`.mutate/<module>/`), never
at the checkout: an interrupted run cannot leave a bug behind, and several
modules can run at once.  PYTHONPATH names that copy, so that the mutated
module is also what the CLI imports in the tests' subprocesses (the editable
install would otherwise give them the clean checkout).

A run takes minutes because each module runs only the tests that exercise
it (TESTS below), stopping at the first failure.  Before the mutants, those
tests run once under coverage (`map_coverage`), and each mutant runs only
the tests that ran the lines it changed (`test_mutant`): a mutant of the
`trace` command no longer waits for every `probe` test, and one that no
test runs survives without a test.
Prints killed/total and every survivor's diff; exit 1 when a module scores
below TARGET.

`--again` tests only the survivors of the previous run, while the module
itself is unchanged: adding tests cannot bring a killed mutant back, so the
previous kills still count.  Any change to the module starts afresh.  It
also finishes an interrupted run (the mutants not yet tested).

`--also PYTHON` (repeatable) runs the tests on that interpreter too, after
this one: code only some Pythons run (`if sys.version_info < (3, 11)`)
gets its mutants killed there.  It needs a virtualenv of that Python with
the `[test]` extra; the scratch copy on PYTHONPATH still wins over its
editable install.  Only mutants the first Python's tests miss reach the
others (the first failure ends the command), so the cost is small.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutate"
TARGET = 0.90

# Module -> the tests that exercise it (files, or single tests where a
# file is mostly about something else).  Subprocess tests are listed where
# the module's code runs only in the CLI process (Ctrl-C, serve).
TESTS = {
    "config": [
        "test_engine.py",
        "test_report.py",
        "test_scenario.py",
        "test_servers.py::test_the_default_loop_and_parser_are_what_uvicorn_standard_picks",
        "test_servers.py::test_a_choice_that_is_not_installed_is_skipped_with_the_reason",
    ],
    "labels": ["test_labels.py", "test_probe.py"],
    "plain": ["test_plain.py", "test_render.py"],
    "index": ["test_index.py", "test_plugins.py"],
    "probe": ["test_probe.py", "test_labels.py", "test_middleware_order.py"],
    "scenario": ["test_scenario.py", "test_report.py", "test_runner.py", "test_plugins.py", "test_middleware_order.py"],
    "report": ["test_report.py", "test_middleware_order.py"],
    "engine": ["test_engine.py", "test_report.py"],
    "runner": [
        "test_runner.py",
        "test_labels.py",
        "test_probe.py",
        "test_engine.py",
        "test_servers.py::test_a_failing_run_leaves_no_server_or_socket_behind",
        "test_servers.py::test_ctrl_c_reports_what_finished_and_exits_130",
        "test_servers.py::test_serve_prints_rows_as_requests_arrive_and_stops_on_ctrl_c",
    ],
    "servers": [
        "test_runner.py",
        "test_independent.py::test_server_scenarios_agree_with_a_from_scratch_server",
        "test_servers.py::test_lifespan_runs_on_the_real_server",
        "test_servers.py::test_a_failing_run_leaves_no_server_or_socket_behind",
        "test_servers.py::test_serve_prints_rows_as_requests_arrive_and_stops_on_ctrl_c",
        "test_servers.py::test_stopping_the_server_closes_a_kept_alive_connection_and_the_port",
        "test_servers.py::test_a_request_still_running_at_stop_is_cancelled_and_its_cleanup_awaited",
        "test_servers.py::test_an_installed_sniffio_still_imports_after_an_in_process_run",
    ],
    # The worker and the per-call child: in process first, then the CLI
    # where only a whole process shows it (Ctrl-C, kill -9, a thread left
    # behind, the app's prints kept off stdout).  The quick runs first, the
    # run of every scenario three ways last: most mutants fail the first.
    "isolate": [
        "test_isolate.py",
        "test_engine.py::TestExecute",
        "test_engine.py::test_what_one_scenario_leaves_in_the_worker_never_reaches_the_next",
        "test_engine.py::test_importing_a_scenarios_module_does_not_cost_a_new_worker",
        "test_engine.py::TestGuard",
        "test_engine.py::TestBaseline",
        "test_hostile.py::TestSignals",
        "test_hostile.py::TestProbeTargets",
        "test_hostile.py::test_a_scenario_that_prints_keeps_stdout_json",
        "test_hostile.py::test_a_scenario_whose_prints_cannot_be_flushed_still_answers",
        "test_hostile.py::test_a_line_the_app_left_unfinished_is_printed_all_the_same",
        "test_hostile.py::TestHangs::test_a_non_daemon_thread_does_not_keep_ctxlab_alive",
        "test_hostile.py::TestHangs::test_probe_of_a_factory_that_never_returns",
        "test_hostile.py::TestHangs::test_a_module_that_ends_the_process_while_importing",
        "test_hostile.py::TestHangs::test_what_a_hung_app_printed_is_not_lost_with_it",
        "test_hostile.py::TestText::test_a_stderr_whose_reader_is_gone",
        "test_hostile.py::TestText::test_an_accent_the_stream_cannot_show_is_replaced_in_what_the_app_prints",
        "test_hostile.py::TestText::test_the_apps_streams_still_say_what_they_write_to",
        "test_engine.py::test_a_shared_worker_observes_what_a_child_per_scenario_and_one_process_do",
    ],
    # What the CLI prints, seen as a user's terminal or pipe gets it.
    "terminal": [
        "test_plain.py",
        "test_hostile.py::TestText::test_markup_in_names_summaries_and_probes_is_literal",
        "test_hostile.py::TestText::test_control_characters_are_shown_as_escapes",
        "test_hostile.py::TestText::test_a_control_character_in_a_scenario_s_source_is_shown_as_an_escape",
        "test_hostile.py::TestText::test_a_width_set_by_mistake_is_held_between_40_and_500",
        "test_hostile.py::TestText::test_a_terminal_that_cannot_show_arrows_gets_ascii",
        "test_hostile.py::TestText::test_a_terminal_that_can_show_arrows_gets_them",
        "test_hostile.py::TestText::test_what_an_ascii_terminal_cannot_show_is_replaced",
        "test_hostile.py::TestText::test_a_closed_stdout_is_one_line",
        "test_hostile.py::TestSignals::test_interrupted_output_file_is_not_written",
        "test_hostile.py::TestText::test_list_never_cuts_a_name",
        "test_hostile.py::test_a_closed_pipe_ends_quietly",
    ],
    "files": [
        "test_cli.py::test_output_file_holds_the_json_report",
        "test_cli.py::test_unwritable_output_is_refused_before_running",
        "test_cli.py::test_output_into_a_missing_directory_is_refused",
        "test_hostile.py::TestOutputFiles",
        "test_hostile.py::TestSignals::test_interrupted_output_file_is_not_written",
    ],
    "validate": ["test_validate.py", "test_report.py", "test_hostile.py::TestMalformedFiles"],
    # The bounds an option and a saved file share, and text a request can carry.
    "limits": [
        "test_validate.py",
        "test_cli.py::test_bad_input_is_one_line_and_exit_2",
        "test_trace_cli.py::TestUsageErrors",
        "test_diagnose.py::TestOptionsShapeTheRequest",
        "test_hostile.py::TestMalformedFiles",
    ],
    "errors": ["test_errors.py"],
    "values": ["test_report.py", "test_probe.py", "test_labels.py"],
    # The console script's first moments: a signal while importing.
    "__main__": [
        "test_hostile.py::TestSignals::test_a_signal_while_ctxlab_is_still_importing",
        "test_hostile.py::TestSignals::test_an_interrupt_inside_code_run_from_a_string_still_exits_130",
        "test_cli.py::test_typo_exits_2_with_a_suggestion_and_no_traceback",
    ],
    # Each command's emitter, JSON and table, as the CLI prints them.
    "output": [
        "test_render.py",
        "test_plain.py",
        "test_cli.py",
        "test_trace_cli.py",
        "test_hostile.py::test_a_closed_pipe_ends_quietly",
        "test_ci.py::test_diff_names_what_a_changed_framework_changed",
    ],
    # The quick checks first; the grids build and run real environments.
    "matrix": [
        "test_ci.py::test_matrix_refuses_bad_columns",
        "test_ci.py::test_matrix_needs_two_columns",
        "test_ci.py::test_matrix_says_when_a_python_is_not_available",
        "test_ci.py::test_matrix_column_may_choose_the_python_and_how_to_serve",
        "test_ci.py::test_matrix_rows_line_up_when_columns_serve_differently",
        "test_ci.py::test_matrix_refuses_an_unknown_serving_choice",
        "test_ci.py::test_matrix_column_is_pinned_when_every_requirement_names_one_version",
        "test_ci.py::test_matrix_refuses_a_bad_requirement_with_packagings_own_reason",
        "test_ci.py::test_matrix_a_requirement_named_like_a_serving_option_is_a_requirement",
        "test_ci.py::test_matrix_column_runs_on_the_python_it_names",
        "test_ci.py::test_matrix_finds_pythons_on_path_from_3_10_to_3_19",
        "test_ci.py::test_matrix_without_pyenv_or_pythons_on_path_has_this_python",
        "test_ci.py::test_matrix_refuses_a_python_older_than_ctxlab_supports",
        "test_ci.py::test_matrix_tells_an_installers_reason_on_one_line",
        "test_ci.py::test_matrix_grid_marks_changes_against_the_previous_column_only",
        "test_ci.py::test_matrix_grid_a_failed_column_is_an_error_in_every_row_and_compared_with_nothing",
        "test_ci.py::test_matrix_exits_1_when_no_column_ran",
        "test_ci.py::test_matrix_exits_1_when_any_cell_drifts_or_errors",
        "test_ci.py::test_matrix_shim_left_pointing_elsewhere_is_pointed_back",
        "test_ci.py::test_matrix_rows_keep_their_server_when_columns_serve_with_one_real_server",
        "test_hostile.py::TestMatrix::test_each_checkout_has_its_own_shim",
        "test_hostile.py::TestMatrix::test_a_bad_scenario_directory_is_refused_before_any_build",
        "test_hostile.py::TestReadOnly::test_matrix_with_a_read_only_cache_is_refused_before_any_build",
        # The grid from hand-made columns.
        "test_render.py::test_a_matrix_without_changes_says_what_was_compared",
        "test_render.py::test_a_matrix_change_is_starred_and_listed_with_its_request",
        "test_render.py::test_a_failed_column_does_not_end_the_comparison_of_the_ones_after_it",
        # Columns run in the environments test_ci's grid builds (cached).
        "test_hostile.py::TestMatrix::test_drift_in_any_column_exits_1",
        "test_hostile.py::TestMatrix::test_a_column_whose_run_exits_3_is_read_all_the_same",
        "test_hostile.py::TestMatrix::test_a_column_that_prints_no_report_is_an_error_cell_saying_why",
        "test_ci.py::test_matrix_grid_over_two_uvicorn_versions",
        "test_ci.py::test_snapshot_from_uvicorn_044_diffed_on_this_uvicorn",
        # Environments built afresh, each in a cache of its own.
        "test_hostile.py::TestMatrix::test_an_uninstallable_column_is_an_error_cell",
        "test_hostile.py::TestMatrix::test_interrupted_while_building_an_environment",
        "test_hostile.py::TestText::test_requirement_extras_are_printed_literally",
        "test_ci.py::test_matrix_an_unpinned_column_follows_new_releases",
        "test_ci.py::test_matrix_two_runs_building_one_environment_at_once_share_it",
        "test_ci.py::test_matrix_columns_on_two_pythons_get_an_environment_each",
        "test_ci.py::test_matrix_builds_with_uv_when_uv_is_on_path",
    ],
    # Real middleware libraries, in process only (each case runs ctxlab
    # and the app's own record in two subprocesses): the ones whose code
    # paths nothing else takes (library layers, Sentry's patch, wrappers,
    # pure ASGI twins).
    # The recorder of `ctxlab trace` on 3.11 (sys.monitoring's side needs
    # --also with a 3.12 virtualenv); the subprocess suites come last
    # (`--var` refused when the app never used the name: `names_used`).
    "tracer": [
        "test_trace.py",
        "test_trace_transparent.py",
        "test_trace_cli.py",
        "test_trace_plugin.py",
        "test_hostile.py::TestTraceVar",
    ],
    # `ctxlab trace` around the recorder: loading, sending the requests,
    # saving and comparing traces (diff), in process first, then the CLI.
    "trace": [
        "test_trace.py",
        "test_trace_transparent.py",
        "test_trace_cli.py",
        "test_trace_plugin.py",
        "test_hostile.py::TestTraceVar",
        # Every saved file, snapshots too: `diff` tells a trace from a snapshot.
        "test_hostile.py::TestMalformedFiles",
        "test_cli.py::test_diff_of_a_saved_run_runs_its_scenarios_again",
        "test_hostile.py::TestProbeTargets",
    ],
    # What a trace found, judged from the recorder's events: hand-made
    # events first, then the trace suites (the CLI and the plugin last).
    "findings": [
        "test_findings.py",
        "test_trace.py",
        "test_trace_transparent.py",
        "test_trace_cli.py",
        "test_trace_plugin.py",
    ],
    # Loading the user's app and sending it requests, for probe and trace:
    # in process first, then both commands as a user runs them.
    "target": [
        "test_target.py",
        "test_diagnose.py",
        "test_trace.py",
        "test_trace_cli.py",
        "test_hostile.py::TestProbeTargets",
        "test_hostile.py::TestHangs::test_probe_of_a_factory_that_never_returns",
        "test_hostile.py::TestHangs::test_a_module_that_ends_the_process_while_importing",
        "test_servers.py::test_an_installed_sniffio_still_imports_after_an_in_process_run",
    ],
    # The plugin runs inside pytest: its suite starts pytest on fixture tests.
    "pytest_plugin": ["test_trace_plugin.py"],
    # The tables, in process first, then as the CLI prints them.
    "render": [
        "test_render.py",
        "test_plain.py",
        "test_cli.py",
        "test_diagnose.py",
        "test_trace_cli.py",
        "test_hostile.py::TestText",
        "test_hostile.py::TestDiffOfATrace",
        "test_servers.py::test_server_both_table_marks_expected_differences",
        "test_servers.py::test_serve_prints_rows_as_requests_arrive_and_stops_on_ctrl_c",
    ],
    # The commands: every one of them only runs as a process, so these are
    # subprocess suites, the quickest first; matrix's grids are left out
    # (their environments take minutes and matrix.py has its own list).
    "cli": [
        "test_cli.py",
        "test_errors.py",
        "test_trace_cli.py",
        "test_diagnose.py",
        "test_index.py",
        "test_plugins.py",
        "test_servers.py",
        "test_hostile.py::TestOutputFiles",
        "test_hostile.py::TestReadOnly",
        "test_hostile.py::TestMalformedFiles",
        "test_hostile.py::TestText",
        "test_hostile.py::TestProbeTargets",
        "test_hostile.py::TestDiffOfATrace",
        "test_hostile.py::TestTraceVar",
        "test_hostile.py::TestHangs",
        "test_hostile.py::TestSignals",
        "test_hostile.py::test_a_directory_name_too_long",
        "test_hostile.py::test_a_timeout_past_a_day_or_no_number_of_seconds_is_refused",
        "test_hostile.py::test_junit_of_control_characters_is_well_formed",
        "test_hostile.py::test_a_closed_pipe_ends_quietly",
        "test_ci.py::test_matrix_refuses_bad_columns",
        "test_ci.py::test_matrix_needs_two_columns",
        "test_ci.py::test_matrix_refuses_an_unknown_serving_choice",
        "test_ci.py::test_check_reports_drift_as_junit_failures_and_github_annotations",
        "test_ci.py::test_check_on_github_keeps_an_app_s_text_from_issuing_workflow_commands",
        "test_ci.py::test_matrix_of_three_columns_is_checked_like_one_of_two",
    ],
    "diagnose": ["test_diagnose.py"]
    + [
        f"test_probe_real_apps.py::test_every_field_matches_what_the_app_recorded[{app}-asgi]"
        for app in (
            "otel_fastapi",
            "sentry_starlette_context",
            "sentry_asgi_wrapper",
            "slowapi_trusted",
            "mounted_subapps",
            "mounted_wrapped",
        )
    ],
}

# Operators left out: swaps no code here could tell apart from a crash
# (`+` to `<<`, `==` to `is`), and the two that pick variables at random
# (a run must be repeatable to compare scores).
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(Pow|RShift|LShift|BitXor|FloorDiv|Mod)$",
    r"core/ReplaceBinaryOperator_(Pow|RShift|LShift|BitXor|FloorDiv|Mod)_",
    r"core/ReplaceComparisonOperator_(Eq|NotEq)_(Lt|LtE|Gt|GtE|Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Lt|LtE|Gt|GtE)_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(Lt|LtE|Gt|GtE)$",
    # `is` and `==` agree on what this code compares by identity: None,
    # enum members, sentinels, tasks and threads (equal only to themselves).
    r"core/ReplaceComparisonOperator_(Is_Eq|IsNot_NotEq)$",
    r"core/ReplaceUnaryOperator_.*Invert",
    r"core/VariableReplacer",
    r"core/VariableInserter",
]

COPIED = ["ctxlab", "scenarios", "tests", "pyproject.toml", "README.md"]


SESSION = "session.sqlite"


def prepare(module: str, again: bool) -> tuple[Path, bool]:
    """A fresh copy of the checkout for `module`, and whether its previous
    session can go on (asked for, and the module unchanged since)."""
    tree = SCRATCH / module
    clean = (ROOT / f"ctxlab/{module}.py").read_bytes()
    # The module as the session began (the scratch copy itself may hold a
    # mutant, if the run was interrupted): the same now, the session goes on.
    began = tree / "module.py.orig"
    resume = again and (tree / SESSION).exists() and began.exists() and began.read_bytes() == clean
    if not resume:
        shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True, exist_ok=True)
    began.write_bytes(clean)
    for name in COPIED:
        source = ROOT / name
        shutil.rmtree(tree / name, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, tree / name)
    return tree, resume


PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]


def mapped_tests(module: str) -> list[str]:
    # A mapped file this checkout does not have (an older one) is left out.
    return [f"tests/{name}" for name in TESTS[module] if (ROOT / "tests" / name.split("::")[0]).exists()]


def test_command(module: str, also: tuple[str, ...]) -> list[str]:
    runs = [[python, *PYTEST, "-x", *mapped_tests(module)] for python in [sys.executable, *also]]
    if len(runs) == 1:
        return runs[0]
    # Cosmic Ray splits its test command into words and runs it without a
    # shell: one command on several Pythons needs `sh -c`.
    return ["sh", "-c", " && ".join(shlex.join(words) for words in runs)]


COVERMAP = "covermap.json"
STARTUP = ROOT / "mutation" / "startup"


def map_coverage(module: str, tree: Path, env: dict[str, str]) -> None:
    """Which tests run each line of the module: its tests, run once under
    coverage (in every process they start, see startup/), into COVERMAP.
    A test that fails or hangs here only makes the map miss lines."""
    data = tree / ".covermap" / "data"
    shutil.rmtree(data.parent, ignore_errors=True)
    data.parent.mkdir()
    measured_module = str(tree / f"ctxlab/{module}.py")
    subprocess.run(
        [sys.executable, *PYTEST, "-p", "covermap_plugin", *mapped_tests(module)],
        cwd=tree,
        env={
            **env,
            "PYTHONPATH": f"{tree}{os.pathsep}{STARTUP}",
            "CTXLAB_COVERMAP": str(data),
            "CTXLAB_COVERMAP_MODULE": measured_module,
        },
        capture_output=True,
    )
    import coverage

    lines: dict[int, set[str]] = {}
    for part in data.parent.glob("data.*"):
        measured = coverage.CoverageData(basename=str(part))
        try:
            measured.read()
            by_line = measured.contexts_by_lineno(measured_module)
        except (coverage.CoverageException, sqlite3.Error):
            continue  # a process killed while saving: a map that misses lines
        for line, contexts in by_line.items():
            lines.setdefault(line, set()).update(context for context in contexts if context)
    order = json.loads((data.parent / "order.json").read_text(encoding="utf-8"))
    covermap = {"order": order, "lines": {line: sorted(tests) for line, tests in lines.items()}}
    (tree / COVERMAP).write_text(json.dumps(covermap), encoding="utf-8")


def test_mutant(module: str, every_test: list[str], every_test_decides: bool = False) -> int:
    """One mutant's test command, run in the scratch copy: only the tests
    the coverage map says run the lines it changed (every test, for a
    line that runs at import).  A mutant counts as killed only when a test
    failed on it; it survives when those tests pass, or at once when no
    test runs its lines.  The map can miss a test (one whose process was
    killed, or one that ran the line in an earlier test's state): then it
    counts a mutant against the score, never for it.

    `every_test_decides` (with --also: the map is made on this Python
    only, and misses what only another one runs): those tests are only a
    quick first try, and every test runs, on every Python, when they pass."""
    tree = Path.cwd()
    original = (tree / "module.py.orig").read_text(encoding="utf-8")
    mutated = (tree / f"ctxlab/{module}.py").read_text(encoding="utf-8")
    covermap = json.loads((tree / COVERMAP).read_text(encoding="utf-8"))
    tests = tests_running(original, changed_lines(original, mutated), covermap)
    if tests == [] and not every_test_decides:
        print(NO_TEST_RUNS_IT)
        return 0
    if tests:
        chosen = subprocess.run([sys.executable, *PYTEST, "-x", *tests]).returncode
        # 4 and 5: pytest found none of those tests (renamed since the map).
        if chosen not in (0, 4, 5) or (chosen == 0 and not every_test_decides):
            return chosen
    return subprocess.run(every_test).returncode


def changed_lines(original: str, mutated: str) -> set[int]:
    """The original's line numbers that the mutation changed."""
    changed = set()
    before, after = original.splitlines(), mutated.splitlines()
    for tag, low, high, _, _ in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if tag == "insert":
            changed |= {low, low + 1}
        elif tag != "equal":
            changed |= set(range(low + 1, high + 1))
    return changed


NO_TEST_RUNS_IT = "no test runs the lines this mutant changed"


def tests_running(source: str, lines: set[int], covermap: dict) -> list[str] | None:
    """The tests that run the statements holding `lines`, in the order the
    module's list runs them; None when a statement runs at import (before
    any test): then every test has to run."""
    module = ast.parse(source)
    tests: set[str] = set()
    for line in lines:
        watched, in_function = statement_lines(module, line)
        if not in_function:
            return None
        tests |= set().union(*(covermap["lines"].get(str(number), ()) for number in watched))
    return [test for test in covermap["order"] if test in tests] if lines else None


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def statement_lines(module: ast.Module, line: int) -> tuple[range, bool]:
    """The lines that run when the innermost statement holding `line` does
    (a compound statement's own lines, between the statements it holds),
    and whether a function holds that statement (else it runs at import)."""
    node, in_function, inner = module, False, module
    while inner is not None:
        held = nested_statements(node)
        inner = next((child for child in held if first_line(child) <= line <= child.end_lineno), None)
        if inner is not None:
            in_function = in_function or isinstance(node, FUNCTIONS)
            node = inner
    if node is module:
        return range(0), False
    before = [child.end_lineno for child in held if child.end_lineno < line]
    after = [first_line(child) for child in held if first_line(child) > line]
    return range(max(before, default=first_line(node) - 1) + 1, min(after, default=node.end_lineno + 1)), in_function


def first_line(statement: ast.stmt) -> int:
    return min([statement.lineno, *(d.lineno for d in getattr(statement, "decorator_list", ()))])


def nested_statements(node: ast.AST) -> list[ast.stmt]:
    held = [*getattr(node, "body", ()), *getattr(node, "orelse", ()), *getattr(node, "finalbody", ())]
    for part in [*getattr(node, "handlers", ()), *getattr(node, "cases", ())]:
        held += part.body
    return held


def cosmic_ray(*args: str, tree: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / args[0]
    return subprocess.run([str(tool), *args[1:]], cwd=tree, env=env, check=True, capture_output=True, text=True)


def run(module: str, again: bool = False, also: tuple[str, ...] = ()) -> tuple[int, int, list[dict]]:
    """Killed, total and the survivors of one module (tested on this
    Python, then on each of `also`)."""
    tree, resume = prepare(module, again)
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    # Mutants of matrix.py build environments: in this checkout's cache,
    # never in the one every checkout shares (unless one is named).
    env.setdefault("CTXLAB_CACHE", str(SCRATCH / "cache"))
    env.pop("FORCE_COLOR", None)
    command = test_command(module, also)
    started = time.perf_counter()
    baseline = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if baseline.returncode != 0:
        raise SystemExit(
            f"{module}: the tests fail before any mutation:\n{(baseline.stdout + baseline.stderr)[-3000:]}"
        )
    # A mutant that hangs is killed by the timeout; leave a slow machine room.
    timeout = max(30.0, 4 * (time.perf_counter() - started))
    map_coverage(module, tree, env)
    mutant_command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--test-mutant",
        module,
        str(bool(also)),
        "--",
        *command,
    ]
    config = tree / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(f'ctxlab/{module}.py')}\n"
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(shlex.join(mutant_command))}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {json.dumps(EXCLUDED_OPERATORS)}\n"
    )
    session = SESSION
    if resume:
        with sqlite3.connect(tree / session) as db:
            db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    else:
        cosmic_ray("cosmic-ray", "init", config.name, session, tree=tree, env=env)
    cosmic_ray("cr-filter-operators", session, config.name, tree=tree, env=env)
    skip_typing_only(tree / session, tree / f"ctxlab/{module}.py")
    cosmic_ray("cosmic-ray", "exec", config.name, session, tree=tree, env=env)
    dump = cosmic_ray("cosmic-ray", "dump", session, tree=tree, env=env).stdout
    killed, survivors = 0, []
    excluded = re.compile("|".join(EXCLUDED_OPERATORS))
    spans = typing_only((tree / f"ctxlab/{module}.py").read_text(encoding="utf-8"))
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None or result["worker_outcome"] != "normal":
            continue  # filtered out, or no mutation possible at that spot
        # A run resumed with --again keeps earlier kills: leave out those
        # that the filters, as they are now, would have skipped.
        if excluded.match(item["mutations"][0]["operator_name"]) or in_spans(item["mutations"][0], spans):
            continue
        if result["test_outcome"] == "killed":
            killed += 1
        else:
            outcome = result["test_outcome"]
            if NO_TEST_RUNS_IT in (result["output"] or ""):
                outcome += ", " + NO_TEST_RUNS_IT
            survivors.append({**item["mutations"][0], "diff": result["diff"], "outcome": outcome})
    (tree / "survivors.txt").write_text("".join(describe(s) for s in survivors))
    return killed, killed + len(survivors), survivors


def typing_only(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module holds code that never runs: annotations (every
    module has `from __future__ import annotations`, so they stay strings)
    and the `if TYPE_CHECKING:` tests."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        typing = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]
            typing = [a.annotation for a in every if a is not None and a.annotation is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            typing = [node.annotation]
        elif isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            typing = [node.test]
        spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in typing if n is not None]
    return spans


def in_spans(mutation: dict, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    start, end = tuple(mutation["start_pos"]), tuple(mutation["end_pos"])
    return any(low <= start and end <= high for low, high in spans)


def skip_typing_only(session: Path, module: Path) -> None:
    """Mark the mutants of code that never runs as skipped, not survivors."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = typing_only(module.read_text(encoding="utf-8"))
    with use_db(str(session)) as db:
        for item in list(db.pending_work_items):
            (mutation,) = item.mutations
            if in_spans({"start_pos": mutation.start_pos, "end_pos": mutation.end_pos}, spans):
                db.set_result(item.job_id, WorkResult(output="typing only", worker_outcome=WorkerOutcome.SKIPPED))


def describe(survivor: dict) -> str:
    line = survivor["start_pos"][0]
    diff = "\n".join(survivor["diff"].splitlines()[2:])  # drop the ---/+++ header
    return f"{survivor['module_path']}:{line} {survivor['operator_name']} ({survivor['outcome']})\n{diff}\n\n"


def main(arguments: list[str]) -> int:
    if arguments[:1] == ["--test-mutant"]:
        return test_mutant(arguments[1], arguments[4:], every_test_decides=arguments[2] == "True")
    again = "--again" in arguments
    also, modules = [], []
    words = iter(arguments)
    for word in words:
        if word == "--also":
            python = next(words, "")
            if not shutil.which(python):
                raise SystemExit(f"--also needs a Python to run the tests with, not {python!r}")
            also.append(str(Path(python).absolute()) if os.sep in python else python)
        elif word != "--again":
            modules.append(word)
    unknown = [m for m in modules if m not in TESTS]
    if unknown:
        raise SystemExit(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(TESTS)}")
    scores = {}
    for module in modules or list(TESTS):
        started = time.perf_counter()
        killed, total, survivors = run(module, again, tuple(also))
        minutes = (time.perf_counter() - started) / 60
        print("".join(describe(s) for s in survivors), end="")
        scores[module] = killed, total
        print(f"{module}: {killed}/{total} killed ({killed / total:.0%}) in {minutes:.1f} min", flush=True)
    print("\n| module | killed/total | score |\n|---|---|---|")
    for module, (killed, total) in scores.items():
        print(f"| {module}.py | {killed}/{total} | {killed / total:.0%} |")
    return 0 if all(killed >= TARGET * total for killed, total in scores.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
