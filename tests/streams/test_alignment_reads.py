"""A dead-lettered message still counts as read, for event-time alignment and for marks
(issue 21).

Each agent that aligns sources holds an event until every source of its partition has passed
its event time or is quiet: read to its end, as of the last fetch (`caught_up`). Marks say the
same of a partition to the agents downstream. Before, only a message that decoded (and passed
the key check) moved the offset read. When the last message of a partition was dead-lettered
(undecodable, invalid, keyed by another id) or had nothing to hold (no speech), that source
never looked quiet:

- the joiner's held events waited for the next message of that source or, if none came, for the
  safety valve (`joiner_align_wait_ms`, 60 s after the input stalled), and its `live.watch`
  mark never called the partition idle, so the author agent's frontier for it stood still;
- the author agent's `live.gifts` progress did the same to its marks on `author.state`;
- the segment agent's held content waited for its valve (`segment_align_wait_ms`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from faust.types import TP
from streamkit import frame
from test_content import Feed, run_agent
from test_content import make_ctx as content_ctx
from test_redelivery import T, dead_letters, feed, make_ctx

from mmbee.schemas import WatchEvent
from mmbee.streams.components.authors import AuthorRuntime
from mmbee.streams.components.segments import SegmentRuntime
from mmbee.streams.components.users import JoinerRuntime


def test_the_joiner_counts_dead_lettered_messages_as_read(tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path)
    runtime = ctx.runtimes["joiner"]
    assert isinstance(runtime, JoinerRuntime)
    watch_tp = TP(ctx.topic_name("live.watch"), 0)
    enter = WatchEvent(event_id="w0", ts_ms=T, user_id="u1", author_id="a1", live_id="l1",
                       action="enter").model_dump_json().encode()  # fmt: skip
    offsets: dict[str, int] = {}
    read: list[tuple[dict[tuple[int, str], int], int | None]] = []

    def note() -> None:
        read.append((dict(runtime.alignment.offsets), runtime.feed.progress.offsets.get(watch_tp)))

    async def main() -> None:
        async with ctx.app.agents["mmbee.joiner"].test_context() as tc:
            await feed(ctx, "joiner", tc, [("live.watch", b"u1", enter)], offsets)
            note()
            bad = [
                ("live.watch", b"u1", b"{not json"),  # undecodable
                ("live.watch", b"u2", enter),  # u1's event keyed by u2
                ("user.activity", None, b'{"kind": "gift"'),  # undecodable
            ]
            await feed(ctx, "joiner", tc, bad, offsets)
            note()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert read[0] == ({(0, "watch"): 0}, 0)
    # each read moved the offset read, for the alignment and for the live.watch marks
    assert read[1] == ({(0, "watch"): 2, (0, "activity"): 0}, 2)
    reasons = [d.reason for d in dead_letters(ctx)]
    assert reasons == ["decode_error", "validation_error", "decode_error"]


def test_the_author_agent_counts_a_dead_lettered_gift_as_read(tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path)
    runtime = ctx.runtimes["authors"]
    assert isinstance(runtime, AuthorRuntime)
    gifts_tp = TP(ctx.topic_name("live.gifts"), 0)
    read: list[int | None] = []

    async def main() -> None:
        async with ctx.app.agents["mmbee.authors"].test_context() as tc:
            await feed(ctx, "authors", tc, [("live.gifts", b"a1", b"\x00garbage")], {})
            read.append(runtime.gifts.offsets.get(gifts_tp))

    asyncio.run(asyncio.wait_for(main(), 60))
    assert read == [0]
    assert [d.reason for d in dead_letters(ctx)] == ["decode_error"]


def test_the_segment_agent_counts_dead_lettered_content_as_read(tmp_path: Path) -> None:
    ctx, _ = content_ctx(tmp_path)
    runtime = ctx.runtimes["segments"]
    assert isinstance(runtime, SegmentRuntime)
    read: list[int | None] = []

    async def body(f: Feed) -> None:
        await f.event(frame("f0", 0))
        await f.settle(1)
        read.append(runtime.work.alignment.aligners[0].last_offset(0))
        await f.raw("live.frames", b"a1", b"\x00garbage")
        await f.settle(2)
        read.append(runtime.work.alignment.aligners[0].last_offset(0))

    run_agent(ctx, "mmbee.segments", body)
    assert read == [0, 1]
