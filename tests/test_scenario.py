"""Declaring and finding scenarios; expectations that depend on the run."""

import re
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import ctxlab
from ctxlab.config import RunConfig
from ctxlab.scenario import (
    ClientRequest,
    Env,
    Scenario,
    ScenarioError,
    bundled_dir,
    by_server,
    by_version,
    catalog,
    load,
    per_request,
    read_entries,
    suggest,
)

FIXED_NAMES = {"bad-then-shiny", "shiny-then-bad", "bad-only", "shiny-only"}


def test_bundled_catalog_has_the_names_the_seeds_fix():
    assert FIXED_NAMES <= set(catalog())


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"expect": 5}, "expect must map each probe label to {variable name: value}, not 5"),
        ({"expect": {"p": 5}}, "expect must map each probe label to {variable name: value}, not {'p': 5}"),
        ({"naive": [1]}, "naive must map each probe label to {variable name: value}, not [1]"),
        ({"requests": 0}, "requests must be a list of ClientRequest, one at least, not 0"),
        ({"requests": []}, "requests must be a list of ClientRequest, one at least, not []"),
        ({"requests": ["/"]}, "requests must be a list of ClientRequest, one at least, not ['/']"),
        ({"concurrency": 0}, "concurrency must be a number of requests, not 0"),
        ({"concurrency": True}, "concurrency must be a number of requests, not True"),
        ({"timeout": -3}, "timeout must be seconds, more than 0 and at most 86400, not -3"),
        ({"timeout": float("inf")}, "timeout must be seconds, more than 0 and at most 86400, not inf"),
        ({"servers": ("asgi", "iis")}, "servers must be a list of asgi, uvicorn, hypercorn, granian, not"),
        ({"lifespan": 1}, "lifespan must be True or False, not 1"),
        ({"pipelined": "x"}, "pipelined must be True or False, not 'x'"),
        ({"concurrent": None}, "concurrent must be True or False, not None"),
        ({"task_per_request": 0}, "task_per_request must be True or False, not 0"),
        ({"why": 5}, "why must be a string, not 5"),
        ({"fix": None}, "fix must be a string, not None"),
        ({"server_options": 5}, "server_options must map uvicorn.Config's arguments to values, not 5"),
        ({"server_options": {1: 2}}, "server_options must map uvicorn.Config's arguments to values, not {1: 2}"),
        ({"requires": 5}, "requires must map package names to versions, such as {'uvicorn': '>=0.45'}, not 5"),
        (
            {"requires": {"uvicorn": 5}},
            "requires must map package names to versions, such as {'uvicorn': '>=0.45'}, not",
        ),
        ({"requires": {5: ">=1"}}, "requires must map package names to versions, such as {'uvicorn': '>=0.45'}, not"),
        (
            {"requires": {"uvicorn": "nope"}},
            "requires must map package names to versions, such as {'uvicorn': '>=0.45'}; 'uvicorn': 'nope' is not a"
            " version specifier",
        ),
    ],
)
def test_what_a_scenario_declares_beyond_its_literals_is_checked_as_it_is_made(declared, message):
    """Values the catalog cannot read without importing (a name, a call)
    are checked as the Scenario is made: an expect of 5 was a traceback
    of ctxlab's when the run compared it, a requests of 0 "TypeError: 'int'
    object is not iterable"."""
    with pytest.raises(ScenarioError, match=re.escape(f"scenario 'x': {message}")):
        Scenario(name="x", summary="", build=lambda: None, **{"expect": {}, **declared})


def test_what_a_scenario_may_declare_at_its_edges():
    made = Scenario(name="x", summary="", build=lambda: None, expect={"p": {"v": 1}}, naive={}, concurrency=1,
                    timeout=86400, requests=[ClientRequest()], servers=("granian",), lifespan=True,
                    requires={"uvicorn": ">=0.45,<1"}, server_options={"http": "h11"})  # fmt: skip
    assert made.timeout == 86400 and made.concurrency == 1


def test_every_entry_has_a_summary_and_tags():
    for entry in catalog().values():
        assert entry.summary and entry.tags, entry.name


def test_metadata_is_read_without_running_the_module(tmp_path):
    module = tmp_path / "mine.py"
    module.write_text(
        textwrap.dedent(
            """
            raise SystemExit("importing this module is a bug")

            @scenario("mine", summary="one line", tags=["x"], expect={})
            def mine():
                pass
            """
        )
    )
    (entry,) = read_entries(module)
    assert (entry.name, entry.summary, entry.tags) == ("mine", "one line", ("x",))


def test_a_computed_name_is_refused_with_the_line(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text('NAME = "x"\n@scenario(NAME, summary="s", expect={})\ndef f(): pass\n')
    with pytest.raises(ScenarioError, match=r"bad.py:2: the scenario's name must be a literal"):
        read_entries(module)


def test_a_name_declared_twice_is_refused(tmp_path):
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.py").write_text('@scenario("same", summary="s", expect={})\ndef f(): pass\n')
    with pytest.raises(ScenarioError, match="declared twice"):
        catalog(tmp_path)


def test_a_user_scenario_may_not_take_a_bundled_name(tmp_path):
    (tmp_path / "mine.py").write_text('@scenario("bad-only", summary="s", expect={})\ndef f(): pass\n')
    with pytest.raises(ScenarioError, match="'bad-only' is declared twice: middleware_order.py and mine.py"):
        catalog(tmp_path)


def test_suggestion_for_a_typo():
    assert suggest("bad-then-shinny", FIXED_NAMES) == "; did you mean 'bad-then-shiny'?"
    assert "ctxlab list" in suggest("zzzz", FIXED_NAMES)


def test_suggestion_for_a_name_in_capitals():
    """Capitals are a long way from the name for difflib, not for the user."""
    assert suggest("BAD-THEN-SHINY", FIXED_NAMES) == "; did you mean 'bad-then-shiny'?"
    assert suggest("Bad-Then-Shinny", FIXED_NAMES) == "; did you mean 'bad-then-shiny'?"
    assert suggest("App", ["apps", "APP"]) == "; did you mean 'APP'?"  # the name as it is spelt


def test_by_version_picks_the_installed_range():
    env = Env("asgi", None, None)
    installed = env.version("starlette")
    value = by_version("starlette", {f"<{installed}": "old", f">={installed}": "new"})
    assert value.resolve(env) == "new"
    with pytest.raises(ScenarioError, match="no expectation for starlette"):
        by_version("starlette", {"<0.1": "ancient"}).resolve(env)


def test_by_server_and_per_request():
    assert by_server(asgi=1, uvicorn=2).resolve(Env("uvicorn", None, 1)) == 2
    repeated = per_request("first", "later")
    assert [repeated.resolve(Env("asgi", None, n)) for n in (1, 2, 3)] == ["first", "later", "later"]


class TestEnv:
    """What an expectation can ask about the run."""

    def test_of_a_config(self):
        env = Env.of(RunConfig("uvicorn", spec_version="2.4", concurrency=7), 3)
        assert (env.server, env.spec_version, env.request, env.concurrency) == ("uvicorn", "2.4", 3, 7)
        assert Env.of(RunConfig()).request is None

    def test_has_compares_with_the_installed_version(self):
        env = Env("asgi", None, None)
        installed = metadata.version("starlette")
        assert env.version("starlette") == installed
        assert env.has("starlette", f"=={installed}") and not env.has("starlette", f"!={installed}")
        assert env.version("no-such-package-here") == "0"

    @pytest.mark.parametrize(
        ("server", "spec_version", "at_least", "answer"),
        [
            ("asgi", None, "2.0", True),  # httpx.ASGITransport sends no spec_version: 2.0
            ("asgi", None, "2.1", False),
            ("uvicorn", None, "2.3", True),  # uvicorn advertises 2.3
            ("uvicorn", None, "2.4", False),
            ("asgi", "2.4", "2.4", True),
            ("asgi", "2.4", "2.10", False),  # numbers, not strings: 2.10 > 2.4
            ("asgi", "2.10", "2.4", True),
        ],
    )
    def test_spec_at_least(self, server, spec_version, at_least, answer):
        assert Env(server, spec_version, None).spec_at_least(at_least) is answer


def test_descriptions_say_how_a_value_varies():
    assert by_server(asgi=None, uvicorn="x").describe == 'on asgi: null; on uvicorn: "x"'
    assert repr(per_request(1, {"a": 2})) == 'request 1: (1); request 2+: ({"a": 2})'
    assert by_version("starlette", {"<1": True, ">=1": [1]}).describe == "starlette<1: true; starlette>=1: [1]"
    assert by_server(asgi=object).describe.startswith("on asgi: <class 'object'>")
    nested = by_server(asgi=per_request("a", "b"), uvicorn="c")
    assert nested.describe == 'on asgi: request 1: ("a"); request 2+: ("b"); on uvicorn: "c"'
    assert nested.resolve(Env("asgi", None, 2)) == "b"


class TestScenario:
    """Expectations, naive readings, requirements and concurrency."""

    def make(self, **options):
        return Scenario(name="s", summary="", build=lambda: None, **options)

    def test_naive_falls_back_to_the_expectation(self):
        s = self.make(expect={"p": {"v": by_server(asgi=1, uvicorn=2), "w": 3}}, naive={"p": {"v": 9}})
        env = Env("uvicorn", None, 1)
        assert [s.expected("p", "v", env), s.naive_value("p", "v", env), s.naive_value("p", "w", env)] == [2, 9, 3]

    def test_an_unmet_requirement_says_what_was_found(self):
        installed = metadata.version("uvicorn")
        s = self.make(expect={}, requires={"starlette": ">=0", "uvicorn": ">999"})
        assert s.unmet_requirement(Env("asgi", None, None)) == f"needs uvicorn>999, found {installed}"
        assert (
            self.make(expect={}, requires={"uvicorn": f"=={installed}"}).unmet_requirement(Env("asgi", None, None))
            is None
        )

    @pytest.mark.parametrize(
        ("built_for", "asked", "settled"), [(None, None, None), (None, 9, None), (50, None, 50), (50, 9, 9)]
    )
    def test_concurrency_applies_only_to_scenarios_built_for_it(self, built_for, asked, settled):
        config = RunConfig("uvicorn", spec_version="2.3", concurrency=asked)
        assert self.make(expect={}, concurrency=built_for).settle(config) == RunConfig(
            "uvicorn", spec_version="2.3", concurrency=settled
        )


class TestDiscovery:
    """Reading scenarios from source, and loading them."""

    def test_servers_and_defaults_are_read_from_the_source(self, tmp_path):
        module = tmp_path / "m.py"
        module.write_text(
            '@scenario("a", summary="s", tags=("x", "y"), servers=["asgi"], expect={})\ndef a(): pass\n'
            '@scenario("b", expect={})\ndef b(): pass\n'
            "scenario = print\n"
            'other("c", summary="s")\n'
        )
        first, second = read_entries(module)
        assert (first.name, first.tags, first.servers, first.path) == ("a", ("x", "y"), ("asgi",), module)
        assert (second.name, second.summary, second.tags) == ("b", "", ())
        # No servers= means every server a scenario runs on by default.
        assert second.servers == Scenario(name="b", summary="", build=print, expect={}).servers
        assert {"asgi", "uvicorn"} <= set(second.servers)

    def test_the_libraries_a_module_imports_are_read_from_the_source(self, tmp_path):
        """What a run imports before it forks its worker: every absolute
        import, in the module's functions too; never a relative one (a
        sibling of the module, not a library)."""
        module = tmp_path / "m.py"
        module.write_text(
            "import httpx, json as j\nfrom starlette.routing import Route\nfrom . import sibling\n"
            "from .helpers import x\n"
            '@scenario("a", expect={})\ndef a():\n    from fastapi import FastAPI\n'
        )
        (entry,) = read_entries(module)
        assert entry.imports == ("fastapi", "httpx", "json", "starlette.routing")

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ('@scenario(summary="s", expect={})\ndef f(): pass\n', "m.py:1: @scenario needs the name first"),
            ('@scenario("a", "s", expect={})\ndef f(): pass\n', "m.py:1: @scenario needs the name first, the rest by"),
            (
                '@scenario("a", summary=SUMMARY, expect={})\ndef f(): pass\n',
                "m.py:1: the scenario's summary must be a literal",
            ),
            ('@scenario("a", tags=TAGS, expect={})\ndef f(): pass\n', "the scenario's tags must be a literal"),
            ('@scenario("a", servers=ALL, expect={})\ndef f(): pass\n', "the scenario's servers must be a literal"),
            ("def f(:\n", "cannot read scenarios from"),
        ],
    )
    def test_what_cannot_be_read_is_refused(self, tmp_path, source, message):
        (tmp_path / "m.py").write_text(source)
        with pytest.raises(ScenarioError, match=re.escape(message)):
            read_entries(tmp_path / "m.py")

    @pytest.mark.parametrize(
        ("declared", "message"),
        [
            ("5, summary='s'", "name must be text without spaces, such as 'my-tenant', not 5"),
            ("'', summary='s'", "name must be text without spaces, such as 'my-tenant', not ''"),
            ("'my tenant', summary='s'", "name must be text without spaces, such as 'my-tenant', not 'my tenant'"),
            ("'a\\x1b', summary='s'", "name must be text without spaces, such as 'my-tenant', not 'a\\x1b'"),
            ("'a', summary=5", "summary must be a string, not 5"),
            ("'a', tags=5", "tags must be a list of strings, not 5"),
            ("'a', tags=['x', 5]", "tags must be a list of strings, not ['x', 5]"),
            ("'a', servers='asgi'", "servers must be a list of asgi, uvicorn, hypercorn, granian, not 'asgi'"),
            ("'a', servers=['asgi', 'iis']", "servers must be a list of asgi, uvicorn, hypercorn, granian, not"),
            ("'a', timeout=0", "timeout must be seconds, more than 0 and at most 86400, not 0"),
            ("'a', timeout=-1", "timeout must be seconds, more than 0 and at most 86400, not -1"),
            ("'a', timeout=1e309", "timeout must be seconds, more than 0 and at most 86400, not inf"),
            ("'a', timeout=86401", "timeout must be seconds, more than 0 and at most 86400, not 86401"),
            ("'a', timeout=True", "timeout must be seconds, more than 0 and at most 86400, not True"),
            ("'a', timeout='10'", "timeout must be seconds, more than 0 and at most 86400, not '10'"),
        ],
    )
    def test_a_literal_of_the_wrong_kind_is_one_line(self, tmp_path, declared, message):
        """Each was a traceback of `ctxlab list` (a tags of 5, a summary of 5),
        or a scenario that "timed out after -1s"."""
        (tmp_path / "m.py").write_text(f"@scenario({declared}, expect={{}})\ndef f(): pass\n")
        with pytest.raises(ScenarioError, match=re.escape(f"m.py:1: the scenario's {message}")):
            read_entries(tmp_path / "m.py")

    @pytest.mark.parametrize("declared", ["timeout=86400", "timeout=0.5", "timeout=T", "servers=['asgi', 'granian']"])
    def test_a_literal_at_its_edge_or_a_name_is_read(self, tmp_path, declared):
        (tmp_path / "m.py").write_text(
            f"@scenario('a-b.c', summary='', tags=[], {declared}, expect={{}})\ndef f(): pass\n"
        )
        (entry,) = read_entries(tmp_path / "m.py")
        assert entry.name == "a-b.c"

    def test_a_directory_the_system_cannot_look_up_says_why(self, tmp_path):
        too_long = tmp_path / ("x" * 300)  # longer than any file name may be (NAME_MAX 255)
        with pytest.raises(ScenarioError, match=f"scenario directory {too_long} cannot be read: File name too long"):
            catalog(too_long)

    def test_a_missing_directory_is_refused(self, tmp_path):
        with pytest.raises(ScenarioError, match=f"scenario directory {tmp_path / 'nope'} does not exist"):
            catalog(tmp_path / "nope")

    def test_a_file_given_as_directory_is_named_so(self, tmp_path):
        (tmp_path / "f.py").write_text("")
        with pytest.raises(ScenarioError, match=f"scenario directory {tmp_path / 'f.py'} is not a directory"):
            catalog(tmp_path / "f.py")

    def test_a_directory_that_declares_no_scenario_is_refused(self, tmp_path):
        """A mistyped --scenarios (the package above, a plain module) is
        refused, not run as if it were not given."""
        (tmp_path / "helpers.py").write_text("def scenario_like(): pass\n")
        (tmp_path / "_private.py").write_text('@scenario("hidden", expect={})\ndef f(): pass\n')
        with pytest.raises(ScenarioError, match=f"scenario directory {tmp_path} declares no scenario"):
            catalog(tmp_path)
        (tmp_path / "mine.py").write_text('@scenario("mine", expect={})\ndef f(): pass\n')
        assert "mine" in catalog(tmp_path)

    def test_private_modules_are_skipped_and_order_is_by_file(self, tmp_path):
        (tmp_path / "_helpers.py").write_text('@scenario("hidden", expect={})\ndef f(): pass\n')
        (tmp_path / "b.py").write_text('@scenario("from-b", expect={})\ndef f(): pass\n')
        (tmp_path / "a.py").write_text('@scenario("from-a", expect={})\ndef f(): pass\n')
        names = list(catalog(tmp_path))
        assert "hidden" not in names and names[-2:] == ["from-a", "from-b"]

    def test_bundled_scenarios_are_found_beside_the_package(self):
        assert bundled_dir() == Path(ctxlab.__file__).resolve().parent.parent / "scenarios"

    def test_load_returns_the_declared_scenario_once(self, tmp_path):
        (tmp_path / "mine.py").write_text(
            "from ctxlab.scenario import scenario\n"
            "LOADS = []\nLOADS.append(1)\n"
            '@scenario("one", summary="s", expect={"p": {"v": 1}}, timeout=3)\ndef one(): return "app"\n'
            '@scenario("two", summary="s", expect={})\ndef two(): pass\n'
        )
        entries = catalog(tmp_path)
        one = load(entries["one"])
        assert (one.name, one.build(), one.expect, one.timeout, one.source) == (
            "one",
            "app",
            {"p": {"v": 1}},
            3,
            tmp_path / "mine.py",
        )
        assert load(entries["two"]).name == "two"
        assert load(entries["one"]) is one
        assert sys.modules["ctxlab_scenario_mine"].LOADS == [1]  # imported once

    def test_an_entry_the_module_does_not_declare(self, tmp_path):
        (tmp_path / "liar.py").write_text(
            'def scenario(*a, **k): return lambda f: f\n@scenario("ghost", expect={})\ndef f(): pass\n'
        )
        with pytest.raises(ScenarioError, match="liar.py lists 'ghost' but does not declare it with @scenario"):
            load(catalog(tmp_path)["ghost"])


def test_a_prerelease_counts_as_its_version(tmp_path, monkeypatch):
    """Someone testing a release candidate gets the expectations of its range."""
    info = tmp_path / "ctxlab_rc_probe-1.0rc1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ctxlab-rc-probe\nVersion: 1.0rc1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = Env("asgi", None, None)
    assert env.version("ctxlab-rc-probe") == "1.0rc1"
    assert by_version("ctxlab-rc-probe", {"<0.9": "old", ">=0.9": "new"}).resolve(env) == "new"
    assert env.has("ctxlab-rc-probe", ">=0.9")


@pytest.mark.parametrize(
    "target",
    [
        "no_such_package_zz.checks",  # its package is missing: ModuleNotFoundError
        ".relative",  # ImportError: no package to be relative to
        "ctxlab_specless",  # in sys.modules without a spec: ValueError
        "json.no_such_module",  # no error, just nothing found
    ],
)
def test_a_plugin_naming_no_module_is_one_clear_error(tmp_path, monkeypatch, target):
    import types

    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ctxlab.scenarios]\nbroken = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "ctxlab_specless", types.ModuleType("ctxlab_specless"))
    with pytest.raises(
        ScenarioError, match=re.escape(f"entry point broken = {target!r} (ctxlab.scenarios) names no module")
    ):
        catalog()


def test_the_default_request_is_immutable():
    """Every scenario that names no requests shares one ClientRequest()."""
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        ClientRequest().status = 500
    assert Scenario(name="a", summary="", build=lambda: None, expect={}).requests == (
        ClientRequest("GET", "/", {}, b"", 200),
    )


def test_by_flag_follows_the_running_pythons_flags():
    """A flag this Python has follows its value; one it lacks counts as off."""
    from ctxlab.scenario import by_flag

    env = Env.of(RunConfig())
    has = by_flag("dont_write_bytecode", on="on", off="off")
    assert has.resolve(env) == ("on" if sys.flags.dont_write_bytecode else "off")
    assert not hasattr(sys.flags, "no_such_flag")
    assert by_flag("no_such_flag", on="on", off="off").resolve(env) == "off"


def test_the_env_names_the_loop_a_run_uses():
    """A run that names no loop runs on asyncio's (the runner's default)."""
    assert (Env.of(RunConfig()).loop, Env.of(RunConfig("uvicorn", "uvloop")).loop) == ("asyncio", "uvloop")
