"""Declaring and finding scenarios; expectations that depend on the run."""

import textwrap

import pytest

from ctxlab.scenario import Env, ScenarioError, by_server, by_version, catalog, per_request, read_entries, suggest

FIXED_NAMES = {"bad-then-shiny", "shiny-then-bad", "bad-only", "shiny-only"}


def test_bundled_catalog_has_the_names_the_seeds_fix():
    assert FIXED_NAMES <= set(catalog())


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
