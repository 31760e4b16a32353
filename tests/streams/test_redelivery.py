"""Redelivery from a committed offset far behind the state (issue 21), told apart exactly from
genuinely late events, without a broker and without timers (`agent.test_context()`).

After a SIGKILL a partition's next owner re-reads its sources from committed offsets that can
lag hours of event time behind the state it recovered, and the forwarders re-send old events
under new offsets. The rows forget event ids a horizon behind the watermark, so on the code
before `mmbee.state.received` an old watch was dead-lettered `late` and an old gift applied a
second time (or dead-lettered `late`), in both the joiner and the authors agent. Now each
forwarded event names its origin (`source`, `source_offset`) and each agent stores, per
partition, the origin offsets it finished (`~received~<p>` rows).

A takeover is played deterministically: the runtime loses the partition (`on_revoked`, as in a
rebalance) and reads it again from offset 0 with the table it stored, which is what the
partition's next owner recovers from the changelog.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from faust.types import TP
from faust.types.tuples import Message

from mmbee.schemas import DeadLetter, GiftEvent, WatchEvent
from mmbee.schemas.serving import AuthorActivity, UserActivity
from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.components.users import JoinerRuntime
from mmbee.streams.publish import MemoryPublisher
from mmbee.streams.runtime.context import StreamContext

T = 1_746_000_000_000
FAR = T + 10**9
HOUR = 3_600_000
STEP = 200_000  # 70 watches 200 s apart: the log spans ~3.9 hours of event time

Msg = tuple[str, bytes | None, bytes]


def make_ctx(tmp_path: Path) -> tuple[StreamContext, MemoryPublisher]:
    settings = Settings(
        store="memory://", data_dir=tmp_path, partitions=2, stream_batch_wait_ms=5,
        label_window_ms=60_000, allowed_lateness_ms=0, joiner_settle_s=0.0,
        author_horizon_ms=HOUR,
    )  # fmt: skip
    pub = MemoryPublisher()
    ctx = build_app(settings, components=["joiner"], publisher=pub, clock_ms=lambda: T)
    return ctx, pub


def gift(event_id: str, ts: int, offset: int) -> Msg:
    """A gift of u1 forwarded onto user.activity from offset `offset` of live.gifts:0."""
    act = UserActivity(kind="gift", event_id=event_id, ts_ms=ts, user_id="u1", author_id="a1",
                       live_id="l1", gift_value=5.0, source="live.gifts:0",
                       source_offset=offset)  # fmt: skip
    return ("user.activity", None, act.model_dump_json().encode())


def joiner_log() -> list[Msg]:
    """Partition 0 of the joiner's sources: one mark (every gift/comment partition far ahead),
    then u1 enters, gifts (live.gifts:0 offset 0), and watches for ~3.9 hours (the row's ids are
    pruned a horizon, 60 s + 10 min, behind the watermark)."""
    mark = UserActivity(kind="mark", marks={f"{n}:{q}": FAR for n in ("live.gifts", "live.comments")
                                            for q in range(2)})  # fmt: skip
    out: list[Msg] = [("user.activity", None, mark.model_dump_json().encode())]

    def watch(i: int, action: str, ts: int) -> None:
        ev = WatchEvent(event_id=f"w{i}", ts_ms=ts, user_id="u1", author_id="a1", live_id="l1",
                        action=action, watch_ms=120_000 if action == "leave" else None)  # fmt: skip
        out.append(("live.watch", b"u1", ev.model_dump_json().encode()))

    watch(0, "enter", T)
    out.append(gift("g0", T + 1_000, 0))
    for i in range(1, 71):
        watch(i, "enter" if i % 2 else "leave", T + 2_000 + STEP * i)
    return out


async def feed(ctx: StreamContext, agent: str, tc: Any, msgs: list[Msg],
               offsets: dict[str, int]) -> None:  # fmt: skip
    """Put `msgs` on partition 0 of their topics, each topic's offsets going on from `offsets`
    (updated), one at a time, each waited for until the agent processed it."""
    channel = tc.stream().channel
    for name, key, value in msgs:
        topic = ctx.topic_name(name)
        offsets[topic] = offsets.get(topic, -1) + 1
        msg = Message(topic, 0, offsets[topic], 0.0, 0, None, key, value, b"",
                      generation_id=ctx.app.consumer_generation_id)  # fmt: skip
        n = ctx.metrics.get(agent, "processed")
        await channel.put(await channel.decode(msg))
        while ctx.metrics.get(agent, "processed") == n:  # polled: no time limit but the test's
            await asyncio.sleep(0.005)


def dead_letters(ctx: StreamContext) -> list[DeadLetter]:
    raw = ctx.publisher.values(ctx.topic_name("dlq"))  # type: ignore[attr-defined]
    return [DeadLetter.model_validate_json(v) for v in raw]


def joiner_takeover(tmp_path: Path, after: list[Msg]) -> tuple[StreamContext, dict[str, Any]]:
    """The log through the joiner; the partition revoked and read again from offset 0 with the
    table it stored; then `after` (new offsets). Returns the context and what the partition held
    before the revocation."""
    ctx, pub = make_ctx(tmp_path)
    runtime: JoinerRuntime = ctx.runtimes["joiner"]
    revoked = {TP(ctx.topic_name("live.watch"), 0), TP(ctx.topic_name("user.activity"), 0)}
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with ctx.app.agents["mmbee.joiner"].test_context() as tc:
            offsets: dict[str, int] = {}
            await feed(ctx, "joiner", tc, joiner_log(), offsets)
            part = runtime.rows.parts[0]
            row = part.joiner.rows["u1"]
            assert "w0" not in row.ids and "g0" not in row.ids  # pruned behind the horizon
            stored = runtime.rows.table.get(b"~received~0")
            seen.update(dump=row.dumps(0), wm=part.joiner.watermark_ms, max_ts=part.joiner.max_ts,
                        gifts=row.state.gifts, stored=stored,
                        enters=len(pub.values(ctx.topic_name("author.activity"))))  # fmt: skip
            runtime.on_revoked(revoked)  # a rebalance: the partition is read again from 0
            assert 0 not in runtime.rows.parts and 0 not in runtime.rows.received.rows.parts
            await feed(ctx, "joiner", tc, joiner_log(), {})
            seen["after_refeed"] = ctx.metrics.get("joiner", "duplicates")
            await feed(ctx, "joiner", tc, after, offsets)

    asyncio.run(asyncio.wait_for(main(), 120))
    return ctx, seen


def test_a_redelivery_after_a_takeover_is_a_duplicate_and_the_received_row_survives(
    tmp_path: Path,
) -> None:
    ctx, seen = joiner_takeover(tmp_path, [])
    assert dead_letters(ctx) == []
    runtime: JoinerRuntime = ctx.runtimes["joiner"]
    part = runtime.rows.parts[0]
    row = part.joiner.rows["u1"]
    assert seen["gifts"] == 1 and row.state.gifts == 1  # the gift counted once
    assert row.dumps(0) == seen["dump"]  # the user's row (examples' user side) as before
    # the watermark came back with the `~received~0` row, which lists live.watch:0 up to the
    # held last watch (open: not finished, so taken again) and the gift's origin
    assert (part.joiner.watermark_ms, part.joiner.max_ts) == (seen["wm"], seen["max_ts"])
    stored = json.loads(seen["stored"])
    assert stored["watermark_ms"] == seen["wm"] and stored["max_ts"] == seen["max_ts"]
    assert stored["received"] == {"live.gifts:0": [0, []], "live.watch:0": [70, [[70, 70]]]}
    # every event but the mark and the held last watch was finished before: duplicates
    assert seen["after_refeed"] == ctx.metrics.get("joiner", "duplicates") == len(joiner_log()) - 2
    # the redelivered enters were not forwarded to the author agent again
    pub = ctx.publisher
    assert len(pub.values(ctx.topic_name("author.activity"))) == seen["enters"]  # type: ignore[attr-defined]


def test_a_re_forwarded_gift_hours_behind_is_a_duplicate(tmp_path: Path) -> None:
    """The forwarder re-reads live.gifts:0 from a committed offset hours behind and sends gift
    g0 again: a new user.activity offset, the same origin (live.gifts:0 offset 0). Before, the
    joiner dead-lettered it `late` (or, with its watermark lost, applied it a second time)."""
    ctx, seen = joiner_takeover(tmp_path, [gift("g0", T + 1_000, 0)])
    assert dead_letters(ctx) == []
    row = ctx.runtimes["joiner"].rows.parts[0].joiner.rows["u1"]
    assert row.state.gifts == 1 and row.dumps(0) == seen["dump"]
    assert ctx.metrics.get("joiner", "duplicates") == seen["after_refeed"] + 1


def test_a_genuinely_late_gift_hours_behind_is_dead_lettered_late(tmp_path: Path) -> None:
    """A gift never received before (a new origin offset, live.gifts:0 offset 1) with an event
    time hours behind the watermark is late: dead-lettered with that reason, not hidden as a
    duplicate."""
    ctx, seen = joiner_takeover(tmp_path, [gift("g1", T + 1_000, 1)])
    (dead,) = dead_letters(ctx)
    assert (dead.reason, dead.agent, dead.event_id) == ("late", "joiner", "g1")
    row = ctx.runtimes["joiner"].rows.parts[0].joiner.rows["u1"]
    assert row.state.gifts == 1 and row.dumps(0) == seen["dump"]
    assert ctx.metrics.get("joiner", "duplicates") == seen["after_refeed"]
    stored = json.loads(ctx.runtimes["joiner"].rows.table.get(b"~received~0"))
    assert stored["received"]["live.gifts:0"] == [1, []]  # finished: a redelivery is a duplicate


def enter(event_id: str, ts: int, origin_offset: int) -> Msg:
    """A watch enter of streamer a1 forwarded from offset `origin_offset` of live.watch:0."""
    act = AuthorActivity(kind="watch", event_id=event_id, ts_ms=ts, author_id="a1", user_id="u1",
                         live_id="l1", source="live.watch:0",
                         source_offset=origin_offset)  # fmt: skip
    return ("author.activity", b"a1", act.model_dump_json().encode())


def authors_log() -> list[Msg]:
    """Partition 0 of the author agent's sources: the live.watch marks far ahead, an enter w0
    (live.watch:0 offset 0) and a gift 5 hours later, which folds w0 into the timeline's base
    (horizon 1 hour) and forgets its id."""
    marks = AuthorActivity(kind="mark", marks={"live.watch:0": FAR, "live.watch:1": FAR})
    g = GiftEvent(event_id="g9", ts_ms=T + 5 * HOUR, user_id="u2", author_id="a1",
                  live_id="l1", gift_value=1.0)  # fmt: skip
    return [
        ("author.activity", None, marks.model_dump_json().encode()),
        enter("w0", T, 0),
        ("live.gifts", b"a1", g.model_dump_json().encode()),
    ]


def authors_run(tmp_path: Path, after: list[Msg]) -> tuple[StreamContext, dict[str, Any]]:
    """The log through the author agent, a takeover (revoked, read again from offset 0 with the
    stored table), then `after` (new offsets)."""
    ctx, _ = make_ctx(tmp_path)
    runtime = ctx.runtimes["authors"]
    revoked = {TP(ctx.topic_name("author.activity"), 0), TP(ctx.topic_name("live.gifts"), 0)}
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with ctx.app.agents["mmbee.authors"].test_context() as tc:
            offsets: dict[str, int] = {}
            await feed(ctx, "authors", tc, authors_log(), offsets)
            tl = runtime.timelines["a1"]
            assert tl.base_ms > T and "w0" not in tl.ids  # folded: its id is forgotten
            seen.update(timeline=tl.dumps(), stored=runtime.table.get(b"~received~0"))
            runtime.on_revoked(revoked)
            assert runtime.timelines == {} and runtime.received.rows.parts == {}
            await feed(ctx, "authors", tc, authors_log(), {})
            seen["after_refeed"] = ctx.metrics.get("authors", "duplicates")
            await feed(ctx, "authors", tc, after, offsets)

    asyncio.run(asyncio.wait_for(main(), 60))
    return ctx, seen


def test_authors_redelivery_and_re_forward_are_duplicates_a_late_enter_is_late(
    tmp_path: Path,
) -> None:
    """The same messages after a takeover, and a joiner's re-forward of enter w0 (new
    author.activity offset, same origin live.watch:0 offset 0) are duplicates; an enter never
    forwarded before (origin offset 7) behind the timeline's base is dead-lettered `late`.
    Before, the re-forward was dead-lettered `late` (0-445 per chaos run)."""
    ctx, seen = authors_run(tmp_path, [enter("w0", T, 0), enter("w7", T, 7)])
    stored = json.loads(seen["stored"])
    assert stored == {"received": {"live.gifts:0": [0, []], "live.watch:0": [0, []]}}
    assert seen["after_refeed"] == 2  # the enter and the gift, read again
    assert ctx.metrics.get("authors", "duplicates") == 3  # and the re-forward
    (dead,) = dead_letters(ctx)
    assert (dead.reason, dead.agent, dead.event_id) == ("late", "authors", "w7")
    tl = ctx.runtimes["authors"].timelines["a1"]
    assert tl.message().counts_before(T + 5 * HOUR + 1) == (1, 1)  # w0 and g9 counted once
    assert tl.dumps() == seen["timeline"]
    stored = json.loads(ctx.runtimes["authors"].table.get(b"~received~0"))
    assert stored["received"]["live.watch:0"] == [7, []]
