"""The labeller: tasks and contexts numbered in creation order, all at once or live."""

import asyncio
from contextvars import ContextVar

from ctxlab.labels import Labeller, label
from ctxlab.probe import Recorder, probe
from ctxlab.runner import scenario_loop

var: ContextVar = ContextVar("var")


def record_child_before_parent():
    """A parent task starts a child and probes only after the child did:
    the records arrive child first, as an endpoint's do under a middleware."""
    recorder = Recorder()

    async def child():
        probe("child", var)

    async def parent():
        await asyncio.get_running_loop().create_task(child())
        probe("parent", var)

    with scenario_loop(recorder) as loop:
        loop.run_until_complete(loop.create_task(parent()))
    return recorder


class TestLabeller:
    """Numbers follow creation order whether records come at once or one by one."""

    def test_a_parent_is_numbered_before_its_child_whatever_the_arrival_order(self):
        recorder = record_child_before_parent()
        child, parent = label(recorder.records, recorder.tasks)
        assert (parent.task, child.task, child.parent_task) == ("T1", "T2", "T1")
        assert child.parent_context == parent.context  # the child runs in a copy of its parent's context

    def test_live_numbering_gives_the_labels_a_finished_run_gives(self):
        recorder = record_child_before_parent()
        live = Labeller(recorder.tasks)
        seen = []
        for record in recorder.records:
            live.number([record])
            seen.append(live.where(record))
        assert seen == label(recorder.records, recorder.tasks)
