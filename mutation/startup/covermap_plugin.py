"""pytest plugin of a `make mutate` coverage map: each test's lines are
recorded under its node id, and so are those of the processes it starts."""

import json
import os

import coverage
import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    # The order the tests run in: the mutant's tests are run in it too,
    # the quick ones first, as the module's list puts them.
    order_file = os.path.join(os.path.dirname(os.environ["CTXLAB_COVERMAP"]), "order.json")
    with open(order_file, "w", encoding="utf-8") as order:
        json.dump([item.nodeid for item in session.items], order)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item):
    measuring = coverage.Coverage.current()
    os.environ["CTXLAB_COVERMAP_TEST"] = item.nodeid
    measuring.switch_context(item.nodeid)
    yield
    measuring.switch_context("")
    del os.environ["CTXLAB_COVERMAP_TEST"]
