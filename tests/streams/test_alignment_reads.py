"""A dead-lettered message still counts as read for the joiner's "read to its end" (issue 21).

The joiner's aligner holds an event until every source of its partition has passed its event
time or is quiet: read to its end, as of the last fetch (`MarkAligner`, `caught_up`). Before,
only a message that decoded and passed the key check moved the offset read. When the last
message of a `live.watch` or `user.activity` partition was dead-lettered (undecodable, invalid,
keyed by another user), that source never looked quiet: the partition's held events waited for
the next message of that source or, if none came, for the safety valve (`joiner_align_wait_ms`,
60 s after the input stalled).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_redelivery import T, dead_letters, feed, make_ctx

from mmbee.schemas import WatchEvent
from mmbee.streams.components.users import JoinerRuntime


def test_dead_lettered_messages_count_as_read(tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path)
    runtime = ctx.runtimes["joiner"]
    assert isinstance(runtime, JoinerRuntime)
    enter = WatchEvent(event_id="w0", ts_ms=T, user_id="u1", author_id="a1", live_id="l1",
                       action="enter").model_dump_json().encode()  # fmt: skip
    offsets: dict[str, int] = {}
    read: list[dict[tuple[int, str], int]] = []

    async def main() -> None:
        async with ctx.app.agents["mmbee.joiner"].test_context() as tc:
            await feed(ctx, "joiner", tc, [("live.watch", b"u1", enter)], offsets)
            read.append(dict(runtime.alignment.offsets))
            bad = [
                ("live.watch", b"u1", b"{not json"),  # undecodable
                ("live.watch", b"u2", enter),  # u1's event keyed by u2
                ("user.activity", None, b'{"kind": "gift"'),  # undecodable
            ]
            await feed(ctx, "joiner", tc, bad, offsets)
            read.append(dict(runtime.alignment.offsets))

    asyncio.run(asyncio.wait_for(main(), 60))
    assert read[0] == {(0, "watch"): 0}
    assert read[1] == {(0, "watch"): 2, (0, "activity"): 0}  # each read moved the offset read
    reasons = [d.reason for d in dead_letters(ctx)]
    assert reasons == ["decode_error", "validation_error", "decode_error"]
