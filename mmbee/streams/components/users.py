"""Component `users` (part of `joiner`): user rows, labels and training examples, point in time.

One agent, `joiner`, over `live.watch` + `user.activity` (key user, co-partitioned). It holds
each event until both sources passed its event time (`runtime.alignment.MarkedAlignment`:
`live.watch` by what it delivered, `user.activity` by the marks of every gift/comment partition;
`align_idle_ms` and the `joiner_align_wait_ms` valve as docs/streams.md says), applies them in
(time, RANK, offset) order through the pure step `apply` to the partition's `PartitionJoiner`,
writes each changed user's row once per release, then acks, and emits settled examples on
`train.examples` (`components/examples.py`). Watch "enter"s go on to `author.activity` as they
arrive (`examples.WatchFeed`). Late events are dead-lettered (`late`); a redelivery (its origin
offset finished before, `mmbee.state.received`; or its id applied) is counted (`duplicates`).
Choice: the step's state is the partition's `PartitionJoiner`, whose rows load lazily (this
component's table, the event's partition); the wall time it needs comes with the item.

Example:
    >>> from mmbee.settings import Settings
    >>> joiner_config(Settings(label_window_ms=60_000)).labels.window_ms
    60000
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, EventT, StreamT, TableT
from pydantic import BaseModel

from mmbee.schemas.events import WatchEvent
from mmbee.schemas.serving import UserActivity
from mmbee.scorer.examples import LabelConfig
from mmbee.settings import Settings
from mmbee.state.align import Source
from mmbee.state.users import JoinerConfig, PartitionJoiner, UserRow
from mmbee.streams.codec import Rejected
from mmbee.streams.components.examples import AGENT_JOINER, ExampleEmitter, UserRows, WatchFeed
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.alignment import MarkedAlignment
from mmbee.streams.runtime.component import Component, Reject, Step
from mmbee.streams.runtime.context import StreamContext, in_event_context
from mmbee.streams.views import Views, feature_config, views

__all__ = ["AGENT_JOINER", "COMPONENT", "MARK_SOURCES", "RANK", "USERS_TABLE", "JoinerRuntime"]

USERS_TABLE = "joiner_users"
"""user_id -> `UserRow` JSON (state, deferred events, ids, waiting impressions)."""
MARK_SOURCES = ("live.gifts", "live.comments")
"""The author-partitioned topics whose events reach the joiner through `user.activity`."""
SOURCES = ("live.watch", "user.activity")
"""The joiner agent's topics, co-partitioned by user."""
RANK = {"watch": 3, "comment": 4, "gift": 5}
"""Order of events with the same event time: watches, comments, gifts (the offline reader's
topic rank, `mmbee.simulator.reader.TOPIC_RANK`), so a gift at the impression's millisecond
counts for it, as offline."""


def joiner_config(settings: Settings) -> JoinerConfig:
    """The joiner's frozen config (its FeatureConfig must be the offline build's: H =
    joiner_history, L = segments_kept, N = graph_top_n)."""
    labels = LabelConfig(
        window_ms=settings.label_window_ms, watch_threshold_ms=settings.label_watch_threshold_ms
    )
    return JoinerConfig(
        features=feature_config(settings), labels=labels, settle_s=settings.joiner_settle_s
    )


@dataclass(frozen=True)
class Timed:
    """One event the aligner released, and the wall time (monotonic s) it was released at."""

    event: BaseModel
    now_s: float


def apply(config: JoinerConfig, state: PartitionJoiner, item: Timed) -> Step[PartitionJoiner, str]:
    """Apply one event to its partition's joiner (built with `config`). Outputs: the users whose
    rows changed, sorted; rejects: `late`, or `duplicate` (counted, not dead-lettered)."""
    res = state.apply(item.event, item.now_s)
    if res.outcome == "duplicate" or res.outcome == "late":
        why = Reject(res.outcome, res.detail, getattr(item.event, "event_id", None))
        return Step(state, rejects=(why,))
    return Step(state, outputs=tuple(sorted(res.touched)))


class RowCodec:
    """A `joiner_users` row: the user's `UserRow` and the partition it belongs to."""

    def dumps(self, state: tuple[UserRow, int]) -> bytes:
        return state[0].dumps(state[1])

    def loads(self, raw: bytes) -> tuple[UserRow, int]:
        return UserRow.loads(raw)


CODEC = RowCodec()


class JoinerRuntime:
    """The joiner agent's rows (`joiner_users`), alignment, acks and emission (`views`)."""

    def __init__(
        self, ctx: StreamContext, table: TableT, config: JoinerConfig, views: Views
    ) -> None:
        self.ctx, self.config, self.views = ctx, config, views
        self.rows = UserRows(ctx, table, config, CODEC)
        self.envelope = Envelope(ctx, AGENT_JOINER, SOURCES)
        self._lock, self._last_batch_s = asyncio.Lock(), float("-inf")
        self.align_wait_s = ctx.settings.joiner_align_wait_ms / 1000
        self.watch_topic = ctx.topic_name("live.watch")
        marks = {f"{n}:{q}" for n in MARK_SOURCES for q in range(ctx.settings.partitions)}
        self.alignment = MarkedAlignment(ctx, AGENT_JOINER, SOURCES, marks, self.align_wait_s)
        self.stream: StreamT | None = None
        self.emitter = ExampleEmitter(ctx, views, config.features, self.watch_topic)
        self.feed = WatchFeed(ctx)

    def on_revoked(self, revoked: set[TP]) -> None:
        """Forget revoked partitions (their unacked events will be redelivered)."""
        parts = self.envelope.forget(revoked)
        self.rows.forget(parts)
        self.alignment.forget(parts)
        self.feed.progress.forget(revoked)
        if parts:
            self.ctx.metrics.count(AGENT_JOINER, "revocations")

    async def process(self, stream: StreamT, events: list[EventT]) -> None:
        """Decode a batch, hold it for alignment, apply and emit what is ready; each step stops
        where a rebalance during an await forgot the partitions (the rest is redelivered)."""
        self.stream = stream
        now = self.ctx.monotonic()
        async with self._lock:
            for ev in self.envelope.live(events):  # older generations: will be redelivered
                if self.envelope.stale(ev):
                    break
                self.envelope.track(ev)
                await self._take(stream, ev, now)
            await self._release_all(stream, now)
            self._last_batch_s = now
            self.ctx.metrics.count(AGENT_JOINER, "processed", len(events))

    async def _release_all(self, stream: StreamT, now: float) -> None:
        generation = self.ctx.app.consumer_generation_id
        for partition in list(self.rows.parts):
            if self.envelope.moved(generation):
                return
            await self._release(stream, partition, now)
        await self.emitter.emit(self.rows, now, generation)

    async def _take(self, stream: StreamT, ev: EventT, now: float) -> None:
        msg = ev.message
        self.rows.part(msg.partition, now).last_event = ev
        source: Source = "watch" if msg.topic == self.watch_topic else "activity"
        self.ctx.metrics.count(AGENT_JOINER, f"read_{source}")
        decoded = self.envelope.decode(ev, check_key=False)
        if type(decoded) is not Rejected:
            if self.alignment.absorb(msg.partition, source, msg.offset, decoded):
                return await self.envelope.done(stream, (ev,))  # a mark: nothing to apply
            decoded = self.envelope.key_problem(ev, self.envelope.name(ev), decoded) or decoded
        if type(decoded) is Rejected:  # a read all the same, for "read to its end" and marks
            self.alignment.seen(msg.partition, source, msg.offset)
            if source == "watch":  # before the await: a revocation meanwhile forgets it
                self.feed.progress.seen(msg.tp, msg.offset, None)
            await self.envelope.rejected(ev, decoded)
            return await self.envelope.done(stream, (ev,))
        origin = self.rows.received.origin(ev, decoded)  # None: a redelivery (counted)
        if isinstance(decoded, WatchEvent):  # enters to author.activity, unless forwarded before
            self.alignment.seen(msg.partition, source, msg.offset)
            await self.feed.watched(msg.tp, msg.offset, decoded, forward=origin is not None)
            if self.envelope.stale(ev):  # the partition was revoked meanwhile: forgotten
                return
        if origin is None:  # finished before (mmbee.state.received): not applied again
            return await self.envelope.done(stream, (ev,))
        self.rows.received.take(msg.partition, origin)
        assert isinstance(decoded, WatchEvent | UserActivity) and decoded.ts_ms is not None
        rank = RANK["watch" if isinstance(decoded, WatchEvent) else decoded.kind]
        self.alignment.aligner(msg.partition).push(ts=decoded.ts_ms, rank=rank,
            offset=msg.offset, item=(ev, decoded, origin), now_s=now, source=source)  # fmt: skip

    async def _release(self, stream: StreamT, partition: int, now: float) -> None:
        part, metrics = self.rows.parts[partition], self.ctx.metrics
        if not len(self.alignment.aligner(partition)):
            return
        stalled = now - self._last_batch_s >= self.align_wait_s
        ready = self.alignment.release(partition, now, stalled)
        # rows are written once per release (a busy user's row is serialised whole), then what
        # the partition received (not for duplicates alone), and the events acked after that
        touched: set[str] = set()
        applied, stored = 0, False
        for ev, model, origin in ready:
            in_event_context(ev)  # the rows a step loads are read from this partition's store
            part.last_event = ev
            step = apply(self.config, part.joiner, Timed(model, now))
            self.rows.received.finish(partition, origin)
            stored |= any(r.reason != "duplicate" for r in step.rejects)
            await self.envelope.reject_step(ev, step.rejects)
            if self.envelope.stale(ev):  # revoked meanwhile: `part` and `ready` are forgotten
                return
            touched.update(step.outputs)
            applied += not step.rejects
        if applied or stored:
            self.rows.store(partition, touched, ready[-1][0])
        if applied:
            metrics.count(AGENT_JOINER, "applied", applied)
        await self.envelope.done(stream, [item[0] for item in ready])
        metrics.gauge(AGENT_JOINER, "held", self.alignment.held)
        if part.joiner.watermark_ms is not None:
            metrics.gauge(AGENT_JOINER, f"watermark_ms_p{partition}", part.joiner.watermark_ms)

    async def tick(self) -> None:
        """Timer: the safety valve, settled examples, when no batch arrives."""
        if self.stream is not None:
            async with self._lock:
                await self._release_all(self.stream, self.ctx.monotonic())

    def user_row(self, partition: int, user_id: str) -> UserRow | None:
        """For serving: `UserRows.user_row`."""
        return self.rows.user_row(partition, user_id)

    def describe(self) -> dict[str, Any]:
        """What `/mmbee/joiner/` shows (`ExampleEmitter.describe`)."""
        return self.emitter.describe(self.rows, self.alignment)


def register(ctx: StreamContext) -> None:
    """The `joiner` agent, its `joiner_users` table, its timers and `/mmbee/joiner/`."""
    settings = ctx.settings
    table = ctx.table(USERS_TABLE, help="joiner: user state, waiting impressions")
    runtime = JoinerRuntime(ctx, table, joiner_config(settings), views(ctx))
    ctx.runtimes[AGENT_JOINER] = runtime
    ctx.on_partitions_revoked(runtime.on_revoked)
    ctx.batch_agent("joiner", SOURCES, runtime.process)

    @ctx.app.timer(0.1, name="mmbee.joiner.tick")
    async def joiner_tick() -> None:
        await runtime.tick()

    @ctx.app.timer(settings.joiner_mark_interval_s, name="mmbee.joiner.watch_marks")
    async def watch_marks() -> None:
        await runtime.feed.send_marks(ctx.monotonic())

    @ctx.app.page("/mmbee/joiner/")
    async def joiner_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(runtime.describe())


COMPONENT = Component(
    name="users", config=joiner_config, apply=apply, codec=CODEC, register=register
)
