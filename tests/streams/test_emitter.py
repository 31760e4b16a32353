"""The joiner's example emission as `/mmbee/joiner/` shows it (issue 21), without a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_redelivery import T, make_ctx

from mmbee.schemas import GiftEvent, WatchEvent
from mmbee.schemas.serving import AuthorTimeline
from mmbee.streams.components.users import JoinerRuntime
from mmbee.streams.publish import MemoryPublisher


class HeldExamples(MemoryPublisher):
    """Holds every send to `train.examples` until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if topic.endswith("train.examples"):
            self.holding.set()
            await self.release.wait()
        await super().send(topic, key, value)


def test_the_joiner_is_not_drained_while_its_examples_are_being_published(tmp_path: Path) -> None:
    """The emitter takes due examples out of the rows, then publishes them one by one; while a
    publish awaits, `/mmbee/joiner/` must still count them as unemitted. It showed every
    partition drained with `emitted` 0 while 1,806 examples were being published (the chaos
    reference, 2026-12-07): harnesses that wait for "drained" then read too few."""
    ctx, _ = make_ctx(tmp_path)
    pub = HeldExamples()
    ctx.publisher = pub
    runtime = ctx.runtimes["joiner"]
    assert isinstance(runtime, JoinerRuntime)
    runtime.views.reader.caught_up.set()
    for q in range(ctx.settings.partitions):  # the author agent: nothing waits anywhere
        runtime.views.authors.put(AuthorTimeline(kind="mark", partition=q, as_of_ms=None))
    joiner = runtime.rows.part(0).joiner
    joiner.apply(WatchEvent(event_id="w0", ts_ms=T, user_id="u1", author_id="a1",
                            live_id="l1", action="enter"), 0.0)  # fmt: skip
    joiner.apply(GiftEvent(event_id="g0", ts_ms=T + 1_000, user_id="u1", author_id="a1",
                           live_id="l1", gift_value=2.0), 0.0)  # fmt: skip
    seen: dict[str, object] = {}

    async def main() -> None:
        emitting = asyncio.ensure_future(runtime.emitter.emit(runtime.rows, 10.0))
        await asyncio.wait_for(pub.holding.wait(), 30)
        seen["during"] = runtime.describe()
        pub.release.set()
        seen["published"] = await emitting
        seen["after"] = runtime.describe()

    asyncio.run(main())
    during, after = seen["during"], seen["after"]
    assert isinstance(during, dict) and isinstance(after, dict)
    assert (during["emitted"], during["partitions"]["0"]["unemitted"]) == (0, 1)
    assert seen["published"] == 1
    assert (after["emitted"], after["partitions"]["0"]["unemitted"]) == (1, 0)
