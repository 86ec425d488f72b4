"""The labeller: tasks and contexts numbered in creation order, all at once or live."""

import asyncio
import contextvars
from contextvars import ContextVar

from ctxlab.labels import Labeller, Where, label
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


class TestRecords:
    """Records are numbered from 1 in the order probes ran; contexts name the one they copy."""

    def test_seq_counts_from_one(self):
        recorder = record_child_before_parent()
        assert [(r.seq, r.probe) for r in recorder.records] == [(1, "child"), (2, "parent")]

    def test_a_fresh_context_is_copied_from_nothing(self):
        recorder = Recorder()

        async def fresh():
            probe("fresh", var)

        with scenario_loop(recorder) as loop:
            loop.run_until_complete(contextvars.Context().run(loop.create_task, fresh()))
            loop.run_until_complete(contextvars.Context().run(loop.create_task, fresh()))
        assert label(recorder.records, recorder.tasks) == [Where("T1", None, "C1", None), Where("T2", None, "C2", None)]
