"""Python imports this at startup in every process of a `make mutate`
coverage map (the map's PYTHONPATH names this folder, and only then):
the lines of the mutated module each test runs, in pytest's process and
in every process a test starts (the CLI tests run ctxlab as a process).
A test's processes get its node id through the environment, as their
static context; pytest's own switches per test (covermap_plugin.py)."""

import os

if os.environ.get("CTXLAB_COVERMAP"):
    import coverage

    # auto_data: saved when the process exits (not when it ends with
    # os._exit, as a forked worker does: its lines then count for no test,
    # and its mutants run every test, which costs time, not truth).
    coverage.Coverage(
        data_file=os.environ["CTXLAB_COVERMAP"],
        data_suffix=True,
        auto_data=True,
        config_file=False,
        include=[os.environ["CTXLAB_COVERMAP_MODULE"]],
        context=os.environ.get("CTXLAB_COVERMAP_TEST", ""),
    ).start()
