"""Component `authors` (part of `joiner`): streamer timelines, published to `author.state`.

One agent, `authors`, over `author.activity` + `live.gifts` (key author): each streamer's
watch and gift counters as a time index (`mmbee.state.authors.Timeline`), one table row per
streamer; the timelines a batch changed go to the compacted `author.state`. Watch "enter"s come
re-keyed by the joiner agent (`examples.WatchFeed`, which sends the `live.watch` marks too).
Per author partition the agent also publishes a mark on `author.state`: the event time up to
which every author event is applied (from those marks and its `live.gifts` progress); examples
wait for it (`components/examples.py`). An event behind a timeline's folded base is
dead-lettered (`late`); a redelivery (its origin offset finished before, `~received~<q>` rows,
`mmbee.state.received`; or its id counted) is counted (`duplicates`).

Example:
    >>> from mmbee.settings import Settings
    >>> author_config(Settings(author_horizon_ms=5_000)).horizon_ms
    5000
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from faust.types import TP, EventT, StreamT, TableT

from mmbee.schemas.events import GiftEvent
from mmbee.schemas.serving import AuthorActivity, AuthorTimeline
from mmbee.settings import Settings
from mmbee.state.align import frontier_of
from mmbee.state.authors import Timeline
from mmbee.streams.codec import Rejected
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.component import Component, Reject, Step
from mmbee.streams.runtime.context import StreamContext, in_event_context
from mmbee.streams.runtime.progress import Progress, assigned, send_partition
from mmbee.streams.runtime.received import Redeliveries

__all__ = ["AGENT_AUTHORS", "AUTHORS_TABLE", "COMPONENT", "AuthorRuntime"]

AGENT_AUTHORS = "authors"
AUTHORS_TABLE = "author_timelines"
"""author_id -> `Timeline` JSON (counters' time index and ids)."""


@dataclass(frozen=True)
class AuthorConfig:
    """horizon_ms: how far back the published timelines keep individual event times."""

    horizon_ms: int


def author_config(settings: Settings) -> AuthorConfig:
    """The author agent's frozen config."""
    return AuthorConfig(horizon_ms=settings.author_horizon_ms)


@dataclass(frozen=True)
class AuthorEvent:
    """A watch enter or a gift of one streamer, with `complete_ms`: the event time up to which
    every event of its partition had arrived when its batch began (-inf: unknown)."""

    kind: Literal["watch", "gift"]
    event_id: str
    ts_ms: int
    complete_ms: float


def apply(config: AuthorConfig, state: Timeline, item: AuthorEvent) -> Step[Timeline, str]:
    """Count one event in the streamer's timeline. Outputs: the streamer, when it changed;
    rejects: `late` (behind the folded base), `duplicate` (counted, not dead-lettered)."""
    outcome = state.add(item.kind, item.event_id, item.ts_ms, config.horizon_ms, item.complete_ms)
    if outcome == "applied":
        return Step(state, outputs=(state.author_id,))
    detail = f"ts_ms {item.ts_ms} is before the timeline's base {state.base_ms}"
    return Step(state, rejects=(Reject(outcome, detail, item.event_id),))


class TimelineCodec:
    """An `author_timelines` row: `Timeline.dumps`, which carries the streamer's id."""

    def dumps(self, state: Timeline) -> bytes:
        return state.dumps()

    def loads(self, raw: bytes) -> Timeline:
        return Timeline.loads(raw)


CODEC = TimelineCodec()


class AuthorRuntime:
    """The `authors` agent's state: streamer timelines (rows of `table`, `author_timelines`),
    published per batch, and the per-partition marks."""

    def __init__(self, ctx: StreamContext, table: TableT, config: AuthorConfig) -> None:
        self.ctx, self.table, self.config = ctx, table, config
        self.timelines: dict[str, Timeline] = {}
        self._activity = ctx.topic_name("author.activity")
        self.envelope = Envelope(ctx, AGENT_AUTHORS, ("author.activity", "live.gifts"))
        self.gifts = Progress(ctx, ("live.gifts",))
        self.activity_marks: dict[int, dict[str, int | None]] = {}
        self.expected = {f"live.watch:{q}" for q in range(ctx.settings.partitions)}
        self._sent: dict[int, tuple[int | None, float]] = {}
        self._lock = asyncio.Lock()
        self.received = Redeliveries(ctx, AGENT_AUTHORS, table)

    def timeline(self, author: str) -> Timeline:
        tl = self.timelines.get(author)
        if tl is None:
            raw = self.table.get(author.encode())
            tl = Timeline.loads(raw, author) if raw is not None else Timeline(author)
            self.timelines[author] = tl
        return tl

    def on_revoked(self, revoked: set[TP]) -> None:
        self.gifts.forget(revoked)
        qs = {tp.partition for tp in revoked if tp.topic == self._activity}
        if qs:
            self.timelines.clear()  # reloaded from the table on next use
            self.received.forget(qs)

    def frontier(self, q: int) -> float | None:
        """Event time up to which every author event of partition `q` is applied."""
        watch = frontier_of(self.activity_marks.get(q, {}), self.expected)
        tp = TP(self.ctx.topic_name("live.gifts"), q)
        if self.gifts.idle(tp):
            gifts: float | None = float("inf")
        else:
            gifts = float(self.gifts.ts[tp]) if tp in self.gifts.ts else None
        if watch is None or gifts is None:
            return None
        return min(watch, gifts)

    async def tick(self) -> None:
        """Timer: marks of partitions that went quiet."""
        async with self._lock:
            await self._marks(self.ctx.monotonic())

    async def _marks(self, now_s: float) -> None:
        """Send each owned partition's frontier to `author.state` (that partition, after its
        timelines) when it moved, or every second."""
        qs = {tp.partition for tp in assigned(self.ctx, {self._activity})}
        for q in sorted(qs or set(self.activity_marks)):
            f = self.frontier(q)
            if f is None:
                continue
            as_of = None if f == float("inf") else int(f)
            last = self._sent.get(q)
            if last is not None and last[0] == as_of and now_s - last[1] < 1.0:
                continue
            mark = self.ctx.codec.encode(AuthorTimeline(kind="mark", partition=q, as_of_ms=as_of))
            await send_partition(self.ctx, "author.state", q, mark, f"~mark~{q}".encode())
            self._sent[q] = (as_of, now_s)

    async def process(self, stream: StreamT, events: list[EventT]) -> None:
        """Apply a batch, write the rows, publish the changed timelines and the marks, then ack
        in order."""
        async with self._lock:
            await self._process(stream, events)
            await self._marks(self.ctx.monotonic())

    async def _process(self, stream: StreamT, events: list[EventT]) -> None:
        ctx, envelope = self.ctx, self.envelope
        dirty: dict[str, None] = {}
        complete: dict[int, float] = {}  # partition -> its frontier when the batch began
        stored: dict[int, EventT] = {}  # partition -> its last event that is not a duplicate
        live = envelope.live(events)
        for ev in live:
            if envelope.stale(ev):  # a rebalance during an await forgot it all: redelivered
                return
            msg = ev.message
            decoded = envelope.decode(ev, check_key=False)
            if type(decoded) is Rejected:
                if msg.topic != self._activity:  # a gift read all the same (for the marks)
                    self.gifts.seen(msg.tp, msg.offset, None)
                await envelope.rejected(ev, decoded)
                continue
            assert isinstance(decoded, AuthorActivity | GiftEvent)
            if isinstance(decoded, AuthorActivity) and decoded.kind == "mark":
                self.activity_marks.setdefault(msg.partition, {}).update(decoded.marks)
                continue
            if isinstance(decoded, GiftEvent):
                self.gifts.seen(msg.tp, msg.offset, decoded.ts_ms)
            assert decoded.author_id is not None  # activities other than marks carry one
            wrong = envelope.key_problem(ev, envelope.name(ev), decoded)
            if wrong is not None:
                await envelope.rejected(ev, wrong)
                continue
            origin, q = self.received.origin(ev, decoded), msg.partition
            if origin is None:  # finished before (mmbee.state.received): counted, acked below
                continue
            in_event_context(ev)
            assert decoded.event_id is not None and decoded.ts_ms is not None
            if q not in complete:
                f = self.frontier(q)
                complete[q] = float("-inf") if f is None else f
            kind: Literal["watch", "gift"] = "gift" if isinstance(decoded, GiftEvent) else "watch"
            self.received.take(q, origin)
            item = AuthorEvent(kind, decoded.event_id, decoded.ts_ms, complete[q])
            step = apply(self.config, self.timeline(decoded.author_id), item)
            self.received.finish(q, origin)
            if step.outputs or any(r.reason != "duplicate" for r in step.rejects):
                stored[q] = ev  # what it received is written after the batch's rows
            for author in step.outputs:
                self.table[author.encode()] = CODEC.dumps(step.state)
                dirty[author] = None
                ctx.metrics.count(AGENT_AUTHORS, "applied")
            await envelope.reject_step(ev, step.rejects)
        if live and envelope.stale(live[-1]):
            return
        for last in stored.values():
            self.received.write(last)
        for author in dirty:
            msg_out = ctx.codec.encode(self.timelines[author].message())
            await ctx.publish("author.state", author.encode(), msg_out)
        ctx.metrics.count(AGENT_AUTHORS, "published", len(dirty))
        for ev in live:
            await stream.ack(ev)
        ctx.metrics.count(AGENT_AUTHORS, "processed", len(events))


def register(ctx: StreamContext) -> None:
    """The `authors` agent, its `author_timelines` table and its marks timer."""
    settings = ctx.settings
    table = ctx.table(AUTHORS_TABLE, help="author timelines (counters by event time)")
    runtime = AuthorRuntime(ctx, table, author_config(settings))
    ctx.runtimes[AGENT_AUTHORS] = runtime
    ctx.on_partitions_revoked(runtime.on_revoked)
    ctx.batch_agent("authors", ("author.activity", "live.gifts"), runtime.process)

    @ctx.app.timer(settings.joiner_mark_interval_s, name="mmbee.authors.marks")
    async def author_marks() -> None:
        await runtime.tick()


COMPONENT = Component(
    name="authors", config=author_config, apply=apply, codec=CODEC, register=register
)
