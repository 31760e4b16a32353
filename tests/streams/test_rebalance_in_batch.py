"""A rebalance while the joiner awaits in the middle of a batch (issue 21), without a broker and
without timers (`agent.test_context()`).

A rebalance revokes every partition (Faust's eager protocol): `on_revoked` forgets the rows,
the alignment and what each partition received, and the next owner (often this worker again)
re-reads from the committed offsets. Before, the joiner went on with the rest of the batch after
such an await: the older generation's events were taken into fresh state (a new aligner, a
`Received` loaded anew) ahead of their redelivered predecessors, so a partition could apply
events out of event-time order after a takeover (the chaos suite saw examples with other labels
and late-dead-lettered impressions). Now each step stops at the first event of an older
generation; the whole rest is redelivered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from faust.types import TP
from faust.types.tuples import Message
from test_redelivery import T, make_ctx

from mmbee.schemas import WatchEvent
from mmbee.streams.components.users import JoinerRuntime
from mmbee.streams.publish import MemoryPublisher


class HeldAuthorActivity(MemoryPublisher):
    """Holds the first send to `author.activity` (the joiner forwarding a watch enter) until
    `release` is set."""

    def __init__(self, sent: list[tuple[str, bytes | None, bytes]]) -> None:
        super().__init__()
        self.sent = sent
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if topic.endswith("author.activity") and not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        await super().send(topic, key, value)


def test_the_rest_of_a_batch_after_a_rebalance_is_left_for_the_next_owner(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path)
    held = HeldAuthorActivity(pub.sent)
    ctx.publisher = held
    runtime = ctx.runtimes["joiner"]
    assert isinstance(runtime, JoinerRuntime)
    topic = ctx.topic_name("live.watch")
    revoked = {TP(topic, 0), TP(ctx.topic_name("user.activity"), 0)}
    after: dict[str, object] = {}

    def enter(i: int) -> Message:
        ev = WatchEvent(event_id=f"w{i}", ts_ms=T + i, user_id="u1", author_id="a1",
                        live_id="l1", action="enter")  # fmt: skip
        return Message(topic, 0, i, 0.0, 0, None, b"u1", ev.model_dump_json().encode(), b"",
                       generation_id=ctx.app.consumer_generation_id)  # fmt: skip

    async def main() -> None:
        async with ctx.app.agents["mmbee.joiner"].test_context() as tc:
            channel = tc.stream().channel
            first, second = [await channel.decode(enter(i)) for i in (0, 1)]
            await channel.put(first)  # both before the agent runs: one batch
            await channel.put(second)
            await asyncio.wait_for(held.holding.wait(), 30)  # w0's enter is being forwarded
            assert runtime.alignment.held == 0 and 0 in runtime.rows.parts
            runtime.on_revoked(revoked)  # a rebalance: every partition forgotten...
            ctx.app.consumer_generation_id += 1  # ...and a new generation
            held.release.set()
            while ctx.metrics.get("joiner", "processed") == 0:
                await asyncio.sleep(0.005)
            after.update(parts=set(runtime.rows.parts), held=runtime.alignment.held,
                         received=set(runtime.rows.received.rows.parts),
                         processed=ctx.metrics.get("joiner", "processed"))  # fmt: skip

    asyncio.run(asyncio.wait_for(main(), 60))
    assert after["processed"] == 2  # the two enters came in one batch
    # neither w0 (its forward awaited across the rebalance) nor w1 touched the state the
    # partition's next owner starts from: no rows, nothing held, nothing received
    assert after["parts"] == set() and after["held"] == 0 and after["received"] == set()
