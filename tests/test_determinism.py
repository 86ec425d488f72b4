"""Same observations on every run, in any order, alone or among others."""

import random

from conftest import ctxlab_json


def observations(document):
    """Everything a run reports except timings, by scenario (and server)."""
    return {
        (s["name"], s.get("server", document["server"])): (s["status"], s["error"], s["onion"], s["observations"])
        for s in document["scenarios"]
    }


def test_run_all_twice_gives_identical_observations():
    _, first, _ = ctxlab_json("run", "--all")
    _, second, _ = ctxlab_json("run", "--all")
    assert observations(first) == observations(second)


def test_shuffled_order_and_alone_give_the_same_observations():
    _, everything, _ = ctxlab_json("run", "--all")
    names = [s["name"] for s in everything["scenarios"]]
    shuffled = random.Random(7).sample(names, len(names))
    _, reordered, _ = ctxlab_json("run", *shuffled)
    assert observations(reordered) == observations(everything)
    for name in random.Random(11).sample(names, 5):
        _, alone, _ = ctxlab_json("run", name)
        assert observations(alone) == {key: value for key, value in observations(everything).items() if key[0] == name}


def test_uvicorn_runs_are_deterministic_too():
    code, first, _ = ctxlab_json("run", "--all", "--server", "uvicorn")
    _, second, _ = ctxlab_json("run", "--all", "--server", "uvicorn")
    assert observations(first) == observations(second)
    # ... and they pass: every scenario meant for uvicorn matches its expectations there.
    failed = {s["name"]: s["status"] for s in first["scenarios"] if s["status"] not in ("pass", "skipped")}
    assert (code, failed) == (0, {})
    assert first["summary"]["passed"] >= 20
