"""What every command runs: selecting scenarios, running each under each
config, and comparing with a saved report."""

import json
import os
import time
from pathlib import Path

import pytest

from ctxlab import engine
from ctxlab.config import RunConfig
from ctxlab.errors import ReportFileError, RunFailed, UsageError
from ctxlab.report import Status

SCENARIOS = """
from contextvars import ContextVar

from ctxlab.probe import probe
from ctxlab.scenario import scenario

var = ContextVar("var", default="default")


async def app(scope, receive, send):
    if scope["type"] == "http":
        probe("p", var)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@scenario("passes", summary="s", tags=["mine", "green"], expect={"p": {"var": "default"}})
def passes():
    return app


@scenario("drifts", summary="s", tags=["mine"], expect={"p": {"var": "other"}})
def drifts():
    return app


@scenario("in-process-only", summary="s", tags=["mine"], servers=["asgi"], expect={"p": {"var": "default"}})
def in_process_only():
    return app


@scenario("needs-future", summary="s", tags=["mine"], requires={"starlette": ">=999"}, expect={})
def needs_future():
    return app


@scenario("built-for-load", summary="s", tags=["mine"], concurrency=3, concurrent=True, expect={"p": {"var": "default"}})
def built_for_load(n):
    return app
"""


@pytest.fixture
def mine(tmp_path) -> list[Path]:
    (tmp_path / "mine.py").write_text(SCENARIOS)
    (tmp_path / "broken_import.py").write_text(
        'raise ImportError("no such thing")\n@scenario("unloadable", expect={})\ndef f(): pass\n'
    )
    return [tmp_path]


class TestSelect:
    """Names, --all and --tag, in the order asked, with clear refusals."""

    def test_names_in_the_order_asked_without_repeats(self, mine):
        chosen = engine.select(["drifts", "passes", "drifts"], False, [], mine)
        assert [e.name for e in chosen] == ["drifts", "passes"]

    def test_tags_narrow_names_and_all(self, mine):
        assert [e.name for e in engine.select([], False, ["green"], mine)] == ["passes"]
        assert [e.name for e in engine.select(["drifts", "passes"], False, ["green"], mine)] == ["passes"]
        every = engine.select([], True, [], mine)
        assert [e.name for e in every][-6:] == [
            "unloadable",
            "passes",
            "drifts",
            "in-process-only",
            "needs-future",
            "built-for-load",
        ]
        assert len(every) == len(engine.entries(mine))

    @pytest.mark.parametrize(
        ("names", "all_", "tags", "message"),
        [
            (["passes"], True, [], "give scenario names or --all, not both"),
            ([], False, [], "name a scenario, or use --all or --tag (see 'ctxlab list')"),
            (["pases"], False, [], "unknown scenario 'pases'; did you mean 'passes'?"),
            ([], False, ["gren"], "unknown tag 'gren'; known tags: "),
        ],
    )
    def test_refusals(self, mine, names, all_, tags, message):
        with pytest.raises(UsageError) as caught:
            engine.select(names, all_, tags, mine)
        assert message in str(caught.value)
        if tags:  # every tag there is, sorted, ours among them
            known = str(caught.value).split("known tags: ")[1].split(", ")
            assert known == sorted(known) and {"green", "mine"} <= set(known)

    def test_a_tag_is_known_if_any_scenario_has_it(self, mine):
        chosen = engine.select(["drifts"], False, [], mine)
        assert engine.tagged(chosen, ["green"], known=engine.entries(mine).values()) == []
        with pytest.raises(UsageError):
            engine.tagged(chosen, ["green"])


class TestRunEntry:
    """A scenario's own faults are its status, never an exception."""

    def run(self, mine, name, server="asgi", **config):
        return engine.run_entry(engine.entries(mine)[name], RunConfig(server, **config))

    def test_pass_and_drift(self, mine):
        assert self.run(mine, "passes").status is Status.PASS
        drifted = self.run(mine, "drifts")
        assert (drifted.status, [o.observed for o in drifted.observations]) == (Status.DRIFT, ["default"])

    def test_skipped_with_the_reason(self, mine):
        other_server = self.run(mine, "in-process-only", "uvicorn")
        assert (other_server.status, other_server.error, other_server.server) == (
            Status.SKIPPED,
            "runs only on asgi",
            "uvicorn",
        )
        too_old = self.run(mine, "needs-future")
        assert too_old.status is Status.SKIPPED and too_old.error.startswith("needs starlette>=999, found ")

    def test_a_module_that_cannot_load(self, mine):
        result = self.run(mine, "unloadable")
        assert (result.status, result.error) == (Status.ERROR, "cannot load: ImportError: no such thing")

    def test_concurrency_reaches_only_scenarios_built_for_it(self, mine):
        built = self.run(mine, "built-for-load", concurrency=5)
        assert (built.config.concurrency, len(built.observations)) == (5, 5)
        assert self.run(mine, "built-for-load").config.concurrency == 3
        assert self.run(mine, "passes", concurrency=5).config.concurrency is None


class TestExecute:
    """Every entry under every config, with progress after each entry."""

    def test_each_entry_on_each_server(self, mine):
        entries = engine.select(["passes", "in-process-only"], False, [], mine)
        seen = []
        report = engine.execute(
            entries,
            [RunConfig("asgi", spec_version="2.3"), RunConfig("uvicorn")],
            lambda e, r: seen.append((e.name, len(r))),
        )
        assert [(s.name, s.server, s.status) for s in report.scenarios] == [
            ("passes", "asgi", Status.PASS), ("passes", "uvicorn", Status.PASS),
            ("in-process-only", "asgi", Status.PASS), ("in-process-only", "uvicorn", Status.SKIPPED),
        ]  # fmt: skip
        assert (report.servers, report.spec_version, report.interrupted) == (("asgi", "uvicorn"), "2.3", False)
        assert seen == [("passes", 2), ("in-process-only", 2)]

    def test_ctrl_c_keeps_what_finished(self, mine):
        def interrupt_after_first(entry, reports):
            raise KeyboardInterrupt

        entries = engine.select(["passes", "drifts"], False, [], mine)
        report = engine.execute(entries, [RunConfig()], interrupt_after_first)
        assert ([s.name for s in report.scenarios], report.interrupted, report.exit_code) == (["passes"], True, 130)


class TestBaseline:
    """Run a saved report again, and compare on the servers both ran."""

    def test_rerun_and_compare(self, mine):
        saved = engine.execute(
            engine.select(["passes", "drifts", "in-process-only"], False, [], mine),
            [RunConfig("asgi"), RunConfig("uvicorn")],
        ).to_json()
        saved["scenarios"].append({"name": "gone", "server": "asgi", "status": "pass", "observations": []})
        saved["scenarios"][0]["observations"][0]["observed"] = "edited"
        again = engine.rerun(saved, mine)
        assert [(s.name, s.server) for s in again.scenarios] == [
            (name, server) for name in ("passes", "drifts", "in-process-only") for server in ("asgi", "uvicorn")
        ]
        changes, elsewhere = engine.baseline_changes(saved, again)
        assert elsewhere == 0
        assert [(c.scenario, c.server, c.var, c.before, c.after) for c in changes] == [
            ("passes", "asgi", "var", "edited", "default"), ("gone", "asgi", "status", "pass", "<not run>"),
        ]  # fmt: skip

    def test_a_baseline_naming_a_scenario_not_in_the_catalog_says_to_pass_scenarios(self, mine, tmp_path):
        saved = engine.execute(engine.select(["passes"], False, [], mine), [RunConfig("asgi")]).to_json()
        saved["scenarios"][0]["name"] = "passez"
        path = tmp_path / "baseline.json"
        path.write_text(json.dumps(saved))
        with pytest.raises(ReportFileError, match=r"names scenario 'passez', which is not in the catalog.*passes"):
            engine.load_baseline(path, mine)
        with pytest.raises(ReportFileError, match=r"if it came from a directory of your own, pass --scenarios DIR$"):
            engine.load_baseline(path)
        saved["scenarios"][0]["name"] = "passes"
        path.write_text(json.dumps(saved))
        assert engine.load_baseline(path, mine)["scenarios"][0]["name"] == "passes"

    def test_runs_on_other_servers_are_counted_not_compared(self, mine):
        saved = engine.execute(
            engine.select(["passes"], False, [], mine), [RunConfig("asgi"), RunConfig("uvicorn")]
        ).to_json()
        only_asgi = engine.execute(engine.select(["passes"], False, [], mine), [RunConfig("asgi")])
        assert engine.baseline_changes(saved, only_asgi) == ([], 1)

    def test_rerun_keeps_the_spec_version(self, mine):
        saved = engine.execute(
            engine.select(["passes"], False, [], mine), [RunConfig("asgi", spec_version="2.4")]
        ).to_json()
        again = engine.rerun(saved, mine)
        assert (again.servers, again.spec_version, again.scenarios[0].config.spec_version) == (("asgi",), "2.4", "2.4")


def test_a_run_config_is_one_immutable_value():
    """One RunConfig() is the default of every report and run: none of them may change it for the others."""
    import dataclasses

    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = "uvicorn"
    assert config == RunConfig("asgi", None, None, None, None) and hash(config) == hash(RunConfig())


def _observed(reports):
    """What reports say about each scenario, timings aside."""
    return {r.name: {k: v for k, v in r.to_json().items() if k != "duration_ms"} for r in reports}


def _each_in_a_child_of_its_own(entries, config):
    # As every run was before the worker: the parent imports each module
    # (to learn its timeout), then forks a child for the scenario alone.
    from ctxlab import isolate
    from ctxlab.scenario import load

    reports = []
    for entry in entries:
        load(entry)
        reports.append(isolate.call(lambda entry=entry: engine.run_entry(entry, config)))
    return reports


def test_a_shared_worker_observes_what_a_child_per_scenario_and_one_process_do():
    """Scenarios run one after another in one worker process (what every
    command does) observe exactly what each observes in a fresh child of
    its own, and what they all observe run in one process: no scenario
    leaves anything behind that changes the next one's observations."""
    from ctxlab import isolate
    from ctxlab.config import settled

    entries = list(engine.entries().values())
    config = settled(RunConfig("asgi"))
    in_worker = _observed(engine.execute(entries, [config]).scenarios)
    per_child = _observed(_each_in_a_child_of_its_own(entries, config))
    # In a child too, so that nothing the scenarios leave stays in pytest's process.
    in_one_process = _observed(isolate.call(lambda: [engine.run_entry(entry, config) for entry in entries]))
    assert in_worker == per_child
    assert in_worker == in_one_process
    assert len(in_worker) == len(entries) and {r["status"] for r in in_worker.values()} <= {"pass", "skipped"}


LEAKERS = """
import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

from ctxlab.probe import probe
from ctxlab.scenario import scenario

var = ContextVar("var", default="default")
pool = ThreadPoolExecutor(1)  # one thread, shared by the scenarios below and never shut down


def answering(before=None):
    async def app(scope, receive, send):
        if scope["type"] == "http":
            if before:
                await asyncio.get_running_loop().run_in_executor(pool, before)
            probe("p", var)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
    return app


@scenario("sets-in-its-factory", summary="s", task_per_request=False, expect={"p": {"var": "factory"}})
def sets_in_its_factory():
    var.set("factory")  # in the context the runner calls the factory in
    return answering()


@scenario("sets-in-the-pool-thread", summary="s", expect={"p": {"var": "default"}})
def sets_in_the_pool_thread():
    return answering(lambda: var.set("pool thread"))  # stays in the thread's own context


@scenario("reads-in-the-pool-thread", summary="s", expect={"p": {"var": "default"}})
def reads_in_the_pool_thread():
    return answering(lambda: probe("p", var))


@scenario("reads-in-its-task", summary="s", task_per_request=False, expect={"p": {"var": "default"}})
def reads_in_its_task():
    return answering()


@scenario("replaces-a-module", summary="s", expect={"p": {"var": "default"}})
def replaces_a_module():
    import sys
    import types

    sys.modules["string"] = types.ModuleType("string")  # an empty stand-in, for whoever imports it next
    return answering()


@scenario("imports-that-module", summary="s", task_per_request=False, expect={"p": {"var": "the real one"}})
def imports_that_module():
    import string

    var.set("the real one" if hasattr(string, "ascii_letters") else "the stand-in")
    return answering()
"""


def test_what_one_scenario_leaves_in_the_worker_never_reaches_the_next(tmp_path):
    """A ContextVar a factory sets, a pool thread that outlives its
    scenario with a value in its context, a module replaced in sys.modules:
    the scenarios after them in the same run observe what they observe alone."""
    (tmp_path / "leakers.py").write_text(LEAKERS)
    entries = engine.select(
        ["sets-in-its-factory", "reads-in-its-task", "sets-in-the-pool-thread", "reads-in-the-pool-thread",
         "replaces-a-module", "imports-that-module"],
        False, [], [tmp_path],
    )  # fmt: skip
    report = engine.execute(entries, [RunConfig()])
    assert [(s.name, s.status, s.error) for s in report.scenarios] == [(e.name, Status.PASS, None) for e in entries]


# -- the guard: a scenario that hangs or ends its process ------------------------------------
HOSTILE = Path(__file__).parent / "fixtures" / "hostile_scenarios"
DIES_WHILE_RUNNING = """
import os

from ctxlab.scenario import scenario


@scenario("dies-while-running", summary="s", tags=["t"], expect={}, timeout=3)
def dies_while_running():
    os._exit(7)
"""


@pytest.fixture(scope="module")
def hostile():
    return engine.entries([HOSTILE])


KILLS_ITSELF = """
import contextlib
import os
import signal

from ctxlab.scenario import scenario


@scenario("killed-while-running", summary="s", tags=["t"], expect={}, timeout=3)
def killed_while_running():
    with contextlib.suppress(OSError):  # SIGKILL's cannot be set; another's may be ignored (under nohup)
        signal.signal(signal.SIGKILL, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGKILL)
"""

# Three scenarios of one module, each writing down the process it runs in.
WRITE_THEIR_PID = """
import os

from ctxlab.scenario import scenario


def answering():
    with open(LOG, "a") as log:
        log.write(f"{os.getpid()}\\n")

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    return app


@scenario("first-pid", summary="s", expect={})
def first_pid():
    return answering()


@scenario("second-pid", summary="s", expect={})
def second_pid():
    return answering()


@scenario("third-pid", summary="s", expect={})
def third_pid():
    return answering()
"""


def test_importing_a_scenarios_module_does_not_cost_a_new_worker(tmp_path):
    """A module imported is no change to the worker (only modules removed
    or replaced are), nor is importing nothing new: the three scenarios run
    in the same worker, which is not this process (their own record of
    os.getpid())."""
    log = tmp_path / "pids.log"
    (tmp_path / "pids.py").write_text(WRITE_THEIR_PID.replace("LOG", repr(str(log))))
    entries = engine.select(["first-pid", "second-pid", "third-pid"], False, [], [tmp_path])
    report = engine.execute(entries, [RunConfig()])
    assert [s.status for s in report.scenarios] == [Status.PASS] * 3
    first, second, third = log.read_text().split()
    assert first == second == third != str(os.getpid())


class TestGuard:
    """What run_guarded, load_or_crash and load_checked say of a scenario
    whose module or app hangs, or ends the process: read from the fixture's
    own declarations (a 1 s timeout, os._exit(9) or (7)), not from ctxlab."""

    def test_an_import_that_hangs_is_killed_at_the_declared_timeout(self, hostile):
        result = engine.run_guarded(hostile["import-hangs"], RunConfig())
        assert (result.status, result.error) == (Status.ERROR, "timed out after 1s importing its module (killed)")
        with pytest.raises(
            RunFailed, match=r"'import-hangs' from .*: timed out after 1s importing its module \(killed\)$"
        ):
            engine.load_or_crash(hostile["import-hangs"], result)  # not imported again here: it would hang
        with pytest.raises(RunFailed, match=r": timed out after 1s importing its module \(killed\)$"):
            engine.load_checked(hostile["import-hangs"])

    def test_an_import_that_ends_the_process(self, hostile):
        result = engine.run_guarded(hostile["import-exits"], RunConfig())
        expected = "crashed importing its module: exited with status 9 without a report"
        assert (result.status, result.error) == (Status.ERROR, expected)
        with pytest.raises(RunFailed, match=f": {expected}$"):
            engine.load_or_crash(hostile["import-exits"], result)  # not imported here: it would end the tests
        with pytest.raises(RunFailed, match=f": {expected}$"):
            engine.load_checked(hostile["import-exits"])

    def test_a_run_that_hangs_is_killed_at_its_timeout_and_the_worker_replaced(self, hostile):
        with engine.prepared_worker([], "asgi") as worker:
            hung = engine.run_guarded(hostile["async-time-sleep"], RunConfig(), worker)
            after = engine.run_guarded(hostile["fine"], RunConfig(), worker)
        assert (hung.status, hung.error) == (Status.ERROR, "timed out after 1s (killed)")
        assert 1000 <= hung.duration_ms < 60_000  # it waited out the timeout, in milliseconds
        assert (after.status, after.error) == (Status.PASS, None)

    @pytest.mark.parametrize("status", [7, 0])
    def test_a_run_that_ends_the_process(self, tmp_path, status):
        (tmp_path / "dies.py").write_text(DIES_WHILE_RUNNING.replace("_exit(7)", f"_exit({status})"))
        started = time.perf_counter()
        result = engine.run_guarded(engine.entries([tmp_path])["dies-while-running"], RunConfig())
        expected = f"crashed: exited with status {status} without a report"  # even 0: it never answered
        assert (result.status, result.error) == (Status.ERROR, expected)
        assert 0 < result.duration_ms <= (time.perf_counter() - started) * 1000  # the time it took, in ms

    @pytest.mark.parametrize("signal", ["SIGKILL", "SIGHUP"])  # SIGHUP: number 1, the lowest
    def test_a_run_killed_by_a_signal_names_the_signal(self, tmp_path, signal):
        (tmp_path / "killed.py").write_text(KILLS_ITSELF.replace("SIGKILL", signal))
        result = engine.run_guarded(engine.entries([tmp_path])["killed-while-running"], RunConfig())
        assert (result.status, result.error) == (Status.ERROR, f"crashed: killed by {signal}")  # what it sent itself

    def test_a_module_that_loads_is_loaded(self, hostile):
        assert engine.load_checked(hostile["fine"]).name == "fine"
        assert engine.load_or_crash(hostile["fine"], None).name == "fine"

    def test_a_module_that_raises_while_importing(self, hostile):
        expected = "ImportError: this module is broken on purpose"
        result = engine.run_guarded(hostile["import-fails"], RunConfig())
        assert (result.status, result.error) == (Status.ERROR, f"cannot load: {expected}")
        with pytest.raises(RunFailed, match=f"cannot load 'import-fails' from .*: {expected}$"):
            engine.load_or_crash(hostile["import-fails"])
