"""The aligned working set across a rebalance (issue 21), without a broker.

`SourceAlignment.release` collects each partition's aligned items and, between partitions,
awaits the consumer to pause or resume a source (backpressure). A rebalance in that await
revokes every partition (Faust's eager protocol): the items already collected belong to a
forgotten generation and are redelivered. Applied anyway, they reached state loaded afresh
ahead of their redelivered predecessors; now `AlignedWorkingSet.release` drops them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faust import Event
from faust.types import TP
from faust.types.tuples import Message

from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.publish import MemoryPublisher
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.workingset import AlignedWorkingSet

SOURCES = ("live.frames", "live.comments")
T = 1_746_000_000_000


def released(tmp_path: Path, rebalance: bool) -> list[Any]:
    """Hold one item in each of partitions 0 and 1, release them (a rebalance in the await
    after partition 0 when `rebalance`); returns what reached `apply_ready`."""
    ctx = build_app(Settings(store="memory://", data_dir=tmp_path, partitions=2), components=[],
                    publisher=MemoryPublisher())  # fmt: skip
    applied: list[Any] = []

    async def apply_ready(stream: Any, ready: list[Any]) -> None:
        applied.extend(item for _, item in ready)

    envelope = Envelope(ctx, "test", SOURCES)
    work: AlignedWorkingSet[Any] = AlignedWorkingSet(
        ctx, "test", SOURCES, envelope, checkpoint_events=100, load=lambda key, p: None,
        store=lambda key, entry, out: asyncio.sleep(0), apply_ready=apply_ready, wait_s=0.0,
    )  # fmt: skip
    topic = ctx.topic_name("live.frames")

    async def backpressure(partition: int, aligner: Any) -> None:  # the consumer round trip
        if rebalance and partition == 0:
            work.revoke({TP(ctx.topic_name(s), p) for s in SOURCES for p in (0, 1)})
            ctx.app.consumer_generation_id += 1

    work.alignment._backpressure = backpressure  # type: ignore[method-assign]

    async def main() -> None:
        for p in (0, 1):
            msg = Message(topic, p, 0, 0.0, 0, None, None, b"{}", b"",
                          generation_id=ctx.app.consumer_generation_id)  # fmt: skip
            work.hold(Event(ctx.app, None, b"{}", {}, msg), SOURCES[0], T, f"item-p{p}", 0.0)
        await work.release(None, 1.0, valve=True)  # type: ignore[arg-type]

    asyncio.run(main())
    return applied


def test_items_of_a_generation_revoked_during_the_release_are_not_applied(
    tmp_path: Path,
) -> None:
    assert sorted(released(tmp_path / "a", rebalance=False)) == ["item-p0", "item-p1"]
    assert released(tmp_path / "b", rebalance=True) == []
