"""A forwarder's progress marks never get ahead of what it has sent (issue 21), without a broker
and without timers (`agent.test_context()`).

The forwarder (`joiner_forward`) re-keys gifts and comments onto `user.activity` and sends every
`user.activity` partition marks: per source partition, how far it forwarded, or None once it
read the partition to its end (idle). The joiner then releases watches up to the marks. The marks
timer runs while a forward awaits the producer; a mark that called the source partition idle
while its last forward was still being sent reached `user.activity` ahead of it, and the joiner
decided impressions before that gift or comment arrived.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faust.types import TP
from faust.types.tuples import Message

from mmbee.schemas import GiftEvent
from mmbee.schemas.serving import UserActivity
from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.components.joiner import AGENT_FORWARD, ForwardRuntime
from mmbee.streams.publish import MemoryPublisher

T = 1_746_000_000_000


class HeldPublisher(MemoryPublisher):
    """Holds every forward to `user.activity` until `release` is set (a producer whose buffer
    is full); marks (keys naming a partition) go through."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if topic.endswith("user.activity") and not (key or b"").startswith(b"~partition:"):
            self.holding.set()
            await self.release.wait()
        await super().send(topic, key, value)


class EndOfPartition:
    """The consumer's view of the source: every partition holds offsets 0 .. high - 1."""

    def __init__(self, high: int) -> None:
        self.high = high

    def highwater(self, tp: TP) -> int:
        return self.high


def test_a_mark_calls_a_partition_idle_only_after_its_last_forward_was_sent(
    tmp_path: Path,
) -> None:
    settings = Settings(store="memory://", data_dir=tmp_path, partitions=2,
                        stream_batch_wait_ms=5)  # fmt: skip
    pub = HeldPublisher()
    ctx = build_app(settings, components=["joiner"], publisher=pub, clock_ms=lambda: T)
    fwd = ctx.runtimes[AGENT_FORWARD]
    assert isinstance(fwd, ForwardRuntime)
    source = ctx.topic_name("live.gifts")
    gift = GiftEvent(event_id="g0", ts_ms=T, user_id="u1", author_id="a1", live_id="l1",
                     gift_value=5.0)  # fmt: skip
    marks: dict[str, Any] = {}

    async def main() -> None:
        async with ctx.app.agents["mmbee.joiner_forward"].test_context() as tc:
            channel = tc.stream().channel
            msg = Message(source, 0, 0, 0.0, 0, None, b"a1", gift.model_dump_json().encode(), b"",
                          generation_id=ctx.app.consumer_generation_id)  # fmt: skip
            await channel.put(await channel.decode(msg))  # the last message of live.gifts:0
            await asyncio.wait_for(pub.holding.wait(), 30)  # its forward is being sent
            consumer = ctx.app.consumer
            ctx.app.consumer = EndOfPartition(high=1)  # type: ignore[assignment]
            marks["while_sending"] = fwd.progress.marks()
            ctx.app.consumer = consumer
            pub.release.set()
            while ctx.metrics.get(AGENT_FORWARD, "processed") == 0:
                await asyncio.sleep(0.005)
            ctx.app.consumer = EndOfPartition(high=1)  # type: ignore[assignment]
            marks["after"] = fwd.progress.marks()
            ctx.app.consumer = consumer

    asyncio.run(asyncio.wait_for(main(), 60))
    # while the forward waits for the producer, live.gifts:0 is not called idle (None)
    assert marks["while_sending"].get("live.gifts:0", "not marked") is not None
    # once it was sent, the partition is read to its end and sent: idle
    assert marks["after"] == {"live.gifts:0": None}
    (sent,) = pub.values(ctx.topic_name("user.activity"))
    assert UserActivity.model_validate_json(sent).event_id == "g0"
