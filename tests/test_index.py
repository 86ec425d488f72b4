"""The catalog index: entries reused while a module is unchanged, read
again as soon as it is edited, and never trusted over the source."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ctxlab_json, python_path

from ctxlab.index import Index
from ctxlab.scenario import catalog

MODULE = '@scenario("mine", summary="{summary}", tags=["x"], expect={{}})\ndef f(): pass\n'


def test_an_edit_in_place_shows_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "cache"))
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    module = scenarios / "mine.py"
    module.write_text(MODULE.format(summary="first"))
    assert catalog(scenarios)["mine"].summary == "first"
    assert Index(tmp_path / "cache" / "catalog-index").file("scenarios", str(scenarios)).is_file()

    stat = module.stat()
    module.write_text(MODULE.format(summary="other"))  # same size
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a later edit, one tick apart
    assert catalog(scenarios)["mine"].summary == "other"

    module.write_text(MODULE.format(summary="a longer one"))
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime: size differs
    assert catalog(scenarios)["mine"].summary == "a longer one"


def test_an_unchanged_module_is_not_parsed_again(tmp_path):
    module = tmp_path / "mine.py"
    module.write_text(MODULE.format(summary="s"))
    reads = []

    def read(path):
        reads.append(path)
        return [{"name": "mine", "summary": "s", "tags": ["x"]}]

    index = Index(tmp_path / "index")
    index.entries(module, read)
    index.save()
    assert Index(tmp_path / "index").entries(module, read) == [{"name": "mine", "summary": "s", "tags": ["x"]}]
    assert reads == [module]


def test_a_listing_reads_only_the_index_of_the_directories_it_lists(tmp_path):
    """Each directory has its own index file: listing many other
    directories before costs a plain `ctxlab list` nothing."""
    ours, other = tmp_path / "ours", tmp_path / "other"
    for directory in (ours, other):
        directory.mkdir()
        (directory / "mine.py").write_text(MODULE.format(summary=directory.name))
    index = Index(tmp_path / "index")
    for directory in (ours, other):
        index.entries(directory / "mine.py", lambda path: [{"summary": path.parent.name}])
    index.save()
    other_file = index.file("scenarios", str(other))
    other_file.write_text("{not json")  # a file read now would make `other` parsed again
    reads = []
    later = Index(tmp_path / "index")
    assert later.entries(ours / "mine.py", reads.append) == [{"summary": "ours"}] and reads == []
    later.save()
    assert other_file.read_text() == "{not json"  # neither read nor written


def test_a_broken_or_foreign_index_is_ignored(tmp_path, monkeypatch):
    from ctxlab.index import FORMAT
    from ctxlab.scenario import bundled_dir

    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "cache"))
    module = catalog()["bad-then-shiny"].path
    stamp = [module.stat().st_mtime_ns, module.stat().st_size]
    index_file = Index().file("scenarios", str(bundled_dir()))
    assert index_file.is_file()
    for text in (
        "{not json",
        json.dumps({"format": "another", "key": str(bundled_dir()), "modules": {}}),
        # another directory's index (a clash of names), saying the module declares nothing
        json.dumps({"format": FORMAT, "key": "/another/directory", "modules": {module.name: [stamp, []]}}),
        json.dumps({"format": FORMAT, "key": str(bundled_dir()), "modules": {module.name: 7}}),
        "[]",
    ):
        index_file.write_text(text)
        assert "bad-then-shiny" in catalog()


def test_list_reads_a_users_directory_through_the_index(tmp_path):
    module = tmp_path / "mine.py"
    module.write_text(MODULE.format(summary="first"))
    env = {"CTXLAB_CACHE": str(tmp_path / "cache")}
    for summary in ("first", "second, longer"):
        module.write_text(MODULE.format(summary=summary))
        code, rows, _ = ctxlab_json("list", "--scenarios", str(tmp_path), env=env)
        assert code == 0 and [r["summary"] for r in rows if r["name"] == "mine"] == [summary]


@pytest.mark.parametrize("env", [{"CTXLAB_CACHE": ""}, {"XDG_CACHE_HOME": "relative"}, {"XDG_CACHE_HOME": ""}])
def test_an_empty_or_relative_cache_variable_leaves_the_working_directory_alone(tmp_path, env):
    """CTXLAB_CACHE="" put the cache in the working directory, as did a
    relative XDG_CACHE_HOME, which the XDG spec says to ignore."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    module = tmp_path / "mine.py"
    module.write_text(MODULE.format(summary="first"))
    full_env = {**os.environ, "HOME": str(home), **env}
    for name in ("CTXLAB_CACHE", "XDG_CACHE_HOME"):
        if name not in env:
            full_env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "ctxlab", "list", "--scenarios", str(tmp_path)],
                          cwd=work, env=full_env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []
    assert (home / ".cache" / "ctxlab" / "catalog-index").is_dir()


def test_a_plugin_installed_after_a_listing_is_found(tmp_path):
    from test_plugins import install

    site = tmp_path / "site"
    site.mkdir()
    env = {"CTXLAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": python_path(site)}
    code, rows, _ = ctxlab_json("list", "--tag", "fix", env=env)
    assert code == 0 and "team-payments" not in {row["name"] for row in rows}
    install(site, "team-payments")
    code, rows, _ = ctxlab_json("list", "--tag", "team", env=env)
    assert code == 0 and [row["name"] for row in rows] == ["team-payments"]


def test_files_of_directories_not_listed_for_30_days_go_when_a_new_one_is_made(tmp_path):
    """Test runs and benchmarks list directories that then vanish: their
    index files would pile up in the cache for ever.  (The recent one is
    29.5 days old: 30 days is the limit.)"""
    old, recent, new = (tmp_path / name for name in ("old", "recent", "new"))
    index = Index(tmp_path / "index")
    for directory in (old, recent, new):
        directory.mkdir()
        (directory / "mine.py").write_text(MODULE.format(summary="s"))
    for directory in (old, recent):
        index.entries(directory / "mine.py", lambda path: [])
    index.save()
    day = 24 * 3600
    os.utime(index.file("scenarios", str(old)), (time.time() - 30.5 * day,) * 2)
    (recent / "mine.py").write_text(MODULE.format(summary="edited"))
    rewritten = Index(tmp_path / "index")
    rewritten.entries(recent / "mine.py", lambda path: [])
    rewritten.save()  # a file rewritten, none made: nothing removed
    assert index.file("scenarios", str(old)).exists()
    os.utime(index.file("scenarios", str(recent)), (time.time() - 29.5 * day,) * 2)
    later = Index(tmp_path / "index")
    later.entries(new / "mine.py", lambda path: [])
    later.save()
    assert [index.file("scenarios", str(d)).exists() for d in (old, recent, new)] == [False, True, True]


def test_what_the_index_cannot_do_it_does_without(tmp_path):
    """A module it cannot stat is left to the reader; a cache it cannot
    write (CTXLAB_CACHE a file) or a stale entry it cannot remove (a
    directory where its file would be) is no error."""
    assert Index(tmp_path / "index").entries(tmp_path / "gone.py", lambda path: ["read"]) == ["read"]
    module = tmp_path / "mine.py"
    module.write_text(MODULE.format(summary="s"))
    (tmp_path / "a-file").write_text("")
    unwritable = Index(tmp_path / "a-file")
    assert unwritable.entries(module, lambda path: ["read"]) == ["read"]
    unwritable.save()
    junk = tmp_path / "index" / "scenarios-junk.json"
    junk.mkdir(parents=True)
    os.utime(junk, (0, 0))
    index = Index(tmp_path / "index")
    index.entries(module, lambda path: ["read"])
    index.save()  # a new file: the stale sweep meets the directory
    assert index.file("scenarios", str(tmp_path)).is_file() and junk.is_dir()
