"""Python imports this at startup in every process of a `make mutate`
coverage map (the map's PYTHONPATH names this folder, and only then):
the lines of the mutated module each test runs, in pytest's process and
in every process a test starts (the CLI tests run ctxlab as a process).
A test's processes get its node id through the environment, as their
static context; pytest's own switches per test (covermap_plugin.py)."""

import os

if os.environ.get("CTXLAB_COVERMAP"):
    import coverage

    def _measure() -> coverage.Coverage:
        # auto_data: saved when the process exits.
        measuring = coverage.Coverage(
            data_file=os.environ["CTXLAB_COVERMAP"],
            data_suffix=True,
            auto_data=True,
            config_file=False,
            include=[os.environ["CTXLAB_COVERMAP_MODULE"]],
            context=os.environ.get("CTXLAB_COVERMAP_TEST", ""),
        )
        measuring.start()
        return measuring

    _measuring = _measure()

    # ctxlab does much of its work in forked children (isolate.py), which
    # end with os._exit, or are killed as soon as they have answered: a
    # child measures afresh, for the test running when it was forked, and
    # saves before each answer it sends, and before it ends.
    def _in_forked_child() -> None:
        global _measuring
        _measuring.stop()
        _measuring = _measure()
        import multiprocessing.connection

        connection = multiprocessing.connection.Connection
        if not hasattr(connection.send, "saves_first"):
            send = connection.send

            def send_saved(self, obj, _send=send) -> None:
                _measuring.save()
                _send(self, obj)

            send_saved.saves_first = True
            connection.send = send_saved

    def _exit_saved(status: int, _exit=os._exit) -> None:
        try:
            _measuring.save()
        finally:
            _exit(status)

    os.register_at_fork(after_in_child=_in_forked_child)
    os._exit = _exit_saved
