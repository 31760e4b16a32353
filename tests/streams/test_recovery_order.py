"""`mmbee.streams.runtime.compat` (recovery_order): at the end of Faust's recovery no source message reaches a
stream before the final flow resume, so that resume has nothing to delete. The worker-level proof
is `test_worker.py::test_nothing_fetched_while_recovery_seeks_is_lost` (a real broker and Faust);
these tests pin the ordering on Faust's own flow control, without a broker."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, NamedTuple

import pytest
from faust.tables.recovery import Recovery
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from mmbee.streams.runtime.compat import (
    _calls_in_order,
    install_sources_resume_after_flow,
    sources_resume_after_flow,
    sources_resume_after_flow_installed,
)


class TP(NamedTuple):
    topic: str
    partition: int


SOURCE, OTHER, CHANGELOG = TP("live.frames", 0), TP("live.asr", 0), TP("app-buffers-changelog", 0)


class Consumer:
    """The part of Faust's consumer that recovery's last step uses."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.active: set[TP] = set()
        self.flowing = False

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def resume_partitions(self, tps: Any) -> None:
        self.active.update(tps)

    def resume_flow(self) -> None:
        self.flowing = True


class App:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.flow_control = FlowControlEvent()
        self.buffer: FlowControlQueue[TP] = FlowControlQueue(
            flow_control=self.flow_control, clear_on_resume=True
        )
        self.consumer_generation_id = 1


class UpstreamEnd:
    """faust-streaming 0.15.3's `Recovery.on_recovery_completed`, its calls in its order. The
    seek is a round trip to the consumer thread, during which the (already running) fetcher
    hands a message of every active source partition to the stream buffer."""

    def __init__(self, app: App, during_seek: Any = None) -> None:
        self.app = app
        self.during_seek = during_seek

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            return
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        await asyncio.sleep(0)  # consumer.perform_seek()
        for tp in sorted(consumer.active):
            if not self._is_changelog_tp(tp):
                self.app.buffer.put_nowait(tp)
        if self.during_seek is not None:
            self.during_seek(self.app)
        self.app.flow_control.resume()
        consumer.resume_flow()


class Patched(UpstreamEnd):
    on_recovery_completed = sources_resume_after_flow(UpstreamEnd.on_recovery_completed)


def _run(end: UpstreamEnd, generation_id: int = 1) -> None:
    asyncio.run(end.on_recovery_completed(generation_id))


def test_upstream_order_deletes_what_the_fetcher_handed_on_during_the_seek() -> None:
    app = App(Consumer({SOURCE, OTHER, CHANGELOG}))
    _run(UpstreamEnd(app))
    assert app.consumer.active == {SOURCE, OTHER}
    assert app.buffer.qsize() == 0  # both handed-on messages deleted: the fault being fixed


def test_sources_resume_right_after_the_flow_resume_and_nothing_is_deleted() -> None:
    app = App(Consumer({SOURCE, OTHER, CHANGELOG}))
    seen: dict[str, Any] = {}

    def during_seek(a: App) -> None:
        seen["active"] = set(a.consumer.active)

    _run(Patched(app, during_seek))
    assert seen["active"] == set()  # nothing could be handed on during the seek
    assert app.consumer.active == {SOURCE, OTHER} and app.consumer.flowing
    # the instance shadows are gone: the consumer and the flow are Faust's again
    assert "resume_partitions" not in vars(app.consumer)
    assert "resume" not in vars(app.flow_control)
    app.buffer.put_nowait(SOURCE)
    app.flow_control.resume()  # a later resume is mode's own again: it clears
    assert app.buffer.qsize() == 0


def test_changelog_partitions_resume_at_once() -> None:
    app = App(Consumer({SOURCE, CHANGELOG}))

    class ResumesAChangelog(UpstreamEnd):
        @sources_resume_after_flow
        async def on_recovery_completed(self, generation_id: int = 0) -> None:
            self.app.consumer.resume_partitions({CHANGELOG, SOURCE})
            assert self.app.consumer.active == {CHANGELOG}

    _run(ResumesAChangelog(app))
    # no flow resume came: the sources are resumed when the method returns
    assert app.consumer.active == {CHANGELOG, SOURCE}


def test_a_rebalance_during_the_seek_leaves_the_sources_to_the_next_recovery() -> None:
    app = App(Consumer({SOURCE, CHANGELOG}))

    def rebalance(a: App) -> None:
        a.consumer_generation_id += 1

    _run(Patched(app, rebalance))
    assert app.consumer.active == set()


def test_only_partitions_still_assigned_are_resumed() -> None:
    app = App(Consumer({SOURCE, OTHER}))

    def revoke(a: App) -> None:
        a.consumer.assigned.discard(OTHER)

    _run(Patched(app, revoke))
    assert app.consumer.active == {SOURCE}


def test_a_failed_end_resumes_nothing_and_restores_faust() -> None:
    app = App(Consumer({SOURCE}))

    def fail(a: App) -> None:
        raise TimeoutError("seek")

    with pytest.raises(TimeoutError):
        _run(Patched(app, fail))
    assert app.consumer.active == set()
    assert "resume_partitions" not in vars(app.consumer)
    assert "resume" not in vars(app.flow_control)


def test_the_installed_faust_is_the_code_patched() -> None:
    assert install_sources_resume_after_flow()
    assert sources_resume_after_flow_installed()
    assert install_sources_resume_after_flow()  # idempotent
    for name in ("on_recovery_completed", "_resume_streams"):
        original = getattr(Recovery, name).__wrapped__
        assert _calls_in_order(inspect.getsource(original))


def test_the_order_check_refuses_other_code() -> None:
    upstream = """
        consumer.resume_partitions(
            {tp for tp in assignment if not self._is_changelog_tp(tp)}
        )
        await self._wait(consumer.perform_seek(), timeout=1)
        self.app.flow_control.resume()
    """
    assert _calls_in_order(upstream)
    reordered = upstream.replace("self.app.flow_control.resume()", "").replace(
        "consumer.resume_partitions(", "self.app.flow_control.resume()\nconsumer.resume_partitions("
    )
    assert not _calls_in_order(reordered)
    assert not _calls_in_order(upstream.replace(".perform_seek()", ".seek_all()"))
